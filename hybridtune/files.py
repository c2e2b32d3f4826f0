"""Durable writes and verified reads: the one place where checkpoints, reports, caches and run state touch disk.

Writes go to a temporary sibling, are flushed and ``fsync``-ed, renamed over the target (atomic on one file
system), and the directory entry is ``fsync``-ed too, so a kill or a power loss leaves either the old file or the
new one, never a torn one. A failing write (disk full, read-only or unwritable directory) becomes a
:class:`FileError` that names the file and what to do; a file that cannot be read back (truncated safetensors,
corrupt torch state, empty or garbage JSON) becomes a :class:`FileError` naming the file and the remedy. The CLI
turns a :class:`FileError` into exit status 2 (it is a :class:`~hybridtune.config_schema.ConfigError`).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = atomic_write_json(d / "a.json", {"x": 1})
    >>> read_json(d / "a.json", remedy="delete it")
    {'x': 1}
    >>> (d / "b.json").write_text("{not json")
    9
    >>> try:
    ...     read_json(d / "b.json", remedy="delete it")
    ... except FileError as err:
    ...     print(str(err).split(": ", 1)[1][:30])
    cannot read it: not valid JSON
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config_schema import ConfigError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class FileError(ConfigError):
    """A file that cannot be written or read back; ``str(err)`` is ``"<path>: <problem>; <remedy>"``."""

    label = "file error"

    def __init__(self, path: str | os.PathLike, problem: str, remedy: str = ""):
        self.path = Path(path)
        super().__init__(f"{problem}{'; ' + remedy if remedy else ''}", "", str(path))

    def with_source(self, source: str | None) -> FileError:
        return self


def write_error(path: str | os.PathLike, exc: OSError, remedy: str = "") -> FileError:
    """A :class:`FileError` for a failed write of ``path`` (disk full and permissions get their own words)."""
    if exc.errno in _NO_SPACE:
        return FileError(path, "no space left on the device while writing it (the previous version, if any, is "
                               "intact)", remedy or "free some space, then run again (add --resume to continue a run)")
    if exc.errno in _NO_PERMISSION:
        return FileError(path, f"cannot write it: {exc.strerror or exc}",
                         remedy or "choose a writable location (e.g. another --out / trainer.output_dir)")
    return FileError(path, f"cannot write it: {exc.strerror or exc}", remedy)


def _disk_full(path: str | os.PathLike) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) has almost no space left."""
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < _NEARLY_FULL
    except OSError:
        return False


_NEARLY_FULL = 16 << 20  # bytes: below this, a failed write is reported as a full disk


@contextmanager
def writing(path: str | os.PathLike, remedy: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into :func:`write_error` for ``path``; so too any other error of
    a writer (``torch.save`` reports a full disk as ``RuntimeError: ... unexpected pos``) when the disk is full."""
    try:
        yield
    except FileError:
        raise
    except OSError as exc:
        raise write_error(path, exc, remedy) from exc
    except Exception as exc:
        if not _disk_full(path):
            raise
        raise write_error(path, OSError(errno.ENOSPC, str(exc)), remedy) from exc


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """``fsync`` every file below ``root`` and every directory, deepest first."""
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(dirpath, name))
        fsync_dir(dirpath)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any], remedy: str = "") -> Path:
    """Call ``writer(tmp)`` to produce the file at a temporary sibling, fsync it, rename it onto ``path``."""
    target = Path(path)
    with writing(target, remedy):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            writer(tmp)
            fsync_file(tmp)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes, remedy: str = "") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), remedy)


def atomic_write_text(path: str | os.PathLike, text: str, remedy: str = "") -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), remedy)


def atomic_write_json(path: str | os.PathLike, value: Any, remedy: str = "", **dump: Any) -> Path:
    """Strict JSON (``allow_nan=False`` unless ``dump`` says otherwise), indented, newline-terminated."""
    options = {"indent": 2, "allow_nan": False, **dump}
    return atomic_write_text(path, json.dumps(value, **options) + "\n", remedy)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# -- verified reads -----------------------------------------------------------------------------------------------
def _read_error(path: Path, what: str, exc: BaseException, remedy: str) -> FileError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return FileError(path, f"cannot read it: {what} ({detail[:200]})", remedy)


def read_json(path: str | os.PathLike, remedy: str) -> Any:
    """The JSON value in ``path``; a missing, empty, undecodable or invalid file is a :class:`FileError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FileError(p, "cannot read it: the file does not exist", remedy) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise _read_error(p, "not readable text", exc, remedy) from exc
    if not text.strip():
        raise FileError(p, "cannot read it: the file is empty (a write cut short?)", remedy)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _read_error(p, "not valid JSON", exc, remedy) from exc


def load_safetensors(path: str | os.PathLike, remedy: str, device: str = "cpu") -> dict:
    """``safetensors.torch.load_file`` with a :class:`FileError` for a missing, truncated or corrupt file."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise FileError(p, "cannot read it: the file does not exist", remedy)
    try:
        return load_file(str(p), device=device)
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) on a torn file
        raise _read_error(p, "not a complete safetensors file", exc, remedy) from exc


def load_torch(path: str | os.PathLike, remedy: str) -> Any:
    """``torch.load(weights_only=True)`` with a :class:`FileError` for a missing, truncated or corrupt file."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise FileError(p, "cannot read it: the file does not exist", remedy)
    try:
        return torch.load(p, weights_only=True)
    except Exception as exc:  # zipfile / pickle / RuntimeError on a torn or foreign file
        raise _read_error(p, "not a complete torch state file", exc, remedy) from exc


__all__ = ["FileError", "write_error", "writing", "fsync_file", "fsync_dir", "fsync_tree", "atomic_write",
           "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "sha256_file", "read_json",
           "load_safetensors", "load_torch"]
