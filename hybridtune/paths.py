"""Where hybridtune keeps what it computes once per machine (conversion cache, assembled models, kernel stamps).

Example:
    >>> import os
    >>> os.environ["HYBRIDTUNE_CACHE"] = "/tmp/ht-cache"
    >>> str(cache_root())
    '/tmp/ht-cache'
    >>> del os.environ["HYBRIDTUNE_CACHE"]
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$HYBRIDTUNE_CACHE``, else ``$XDG_CACHE_HOME/hybridtune``, else ``~/.cache/hybridtune``."""
    if os.environ.get("HYBRIDTUNE_CACHE"):
        return Path(os.environ["HYBRIDTUNE_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "hybridtune"
