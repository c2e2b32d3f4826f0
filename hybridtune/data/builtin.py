"""Built-in corpora read from what every CPython interpreter carries (no download, no extra package).

Three clearly different registers, so that domain shift and forgetting can be measured:

- ``python-docs``: English reference prose, the pydoc topics of the language reference
  (``pydoc_data.topics.topics``), one document per topic, split key = topic name.
- ``python-code``: the standard library's own pure-Python source, one document per ``.py`` file under
  ``sysconfig.get_paths()["stdlib"]``, split key = path relative to that directory (posix form). Left out: tests,
  third-party dirs, and the parts that distributions (Debian, Fedora, ...) move into optional packages or that are
  generated or install-specific, so the domain is the same set on every install of one Python version (see
  ``EXCLUDED_DIRS`` / ``EXCLUDED_FILES``).
- ``unicode-names``: the Unicode character database compiled into the interpreter (``unicodedata``), rendered as a
  reference table, one line per named character: ``U+00C0 À LATIN CAPITAL LETTER A WITH GRAVE (Lu)``. One document
  per 128-code-point chunk (split key ``U+0080``). Algorithmically named ranges (CJK ideographs, Hangul
  syllables, ...) are left out: their names are the code point again. ``unicodedata`` is part of every CPython
  build (the codecs and ``str`` methods rely on it), unlike text files under ``Lib/`` (Debian ships no
  ``LICENSE.txt`` and moves ``Lib/test`` and ``idlelib`` to optional packages).

Content depends on the interpreter version (docs and stdlib change; 3.10 / 3.11 / 3.12 / 3.13 carry Unicode
13.0 / 14.0 / 15.0 / 15.1), so ``describe()`` records the Python version, and split keys are names, not contents,
so a document stays in the same split across versions.

Example:
    >>> docs = python_docs()
    >>> docs.name, docs.describe()["splits"]["eval"]["documents"] > 0
    ('python-docs', True)
"""

from __future__ import annotations

import os
import sysconfig
import unicodedata
from pathlib import Path

from .corpus import DEFAULT_EVAL_FRACTION, Corpus, CorpusError, Document

# Directory names skipped anywhere under the stdlib: tests; third-party installs; parts that Debian-style
# distributions ship as separate packages or drop (idlelib, tkinter, turtledemo, lib2to3, distutils, ensurepip,
# ctypes/macholib; checked against Debian's python3.11); generated codec tables (encodings); the pydoc topics
# (already the python-docs domain: keep domains disjoint).
EXCLUDED_DIRS = frozenset(
    {
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "site-packages",
        "dist-packages",
        "lib-dynload",
        "idlelib",
        "tkinter",
        "turtledemo",
        "lib2to3",
        "distutils",
        "ensurepip",
        "macholib",
        "encodings",
        "pydoc_data",
        "__phello__",
    }
)
# Files skipped: toy modules that exist for tests, turtle (ships with tkinter on Debian), and distribution hooks
# (Debian links sitecustomize.py from /etc and adds _distutils_system_mod.py). Prefixes: build-specific config.
EXCLUDED_FILES = frozenset({"__hello__.py", "turtle.py", "sitecustomize.py", "_distutils_system_mod.py"})
EXCLUDED_PREFIXES = ("_sysconfigdata", "config-")

# Name prefixes of algorithmically named characters: "CJK UNIFIED IDEOGRAPH-4E00" says nothing new.
_ALGORITHMIC_NAMES = (
    "CJK UNIFIED IDEOGRAPH-",
    "CJK COMPATIBILITY IDEOGRAPH-",
    "TANGUT IDEOGRAPH-",
    "KHITAN SMALL SCRIPT CHARACTER-",
    "NUSHU CHARACTER-",
    "HANGUL SYLLABLE ",
)
UNICODE_CHUNK = 128


def python_docs(eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """Python reference prose: one document per topic of ``pydoc_data.topics`` (what ``help("FOR")`` shows).

    Example:
        >>> python_docs().records("all")[0].key
        'assert'
    """

    def load() -> list[Document]:
        try:
            from pydoc_data.topics import topics
        except ImportError as err:  # stripped-down interpreters (some embedded builds) drop it
            raise CorpusError(
                "built-in corpus 'python-docs' needs the standard module pydoc_data.topics, which this Python "
                f"install lacks ({err}); use 'python-code' or 'unicode-names', or a user file",
                path="pydoc_data.topics",
            ) from err
        return [Document(name, topics[name]) for name in sorted(topics) if topics[name].strip()]

    return Corpus("python-docs", "pydoc_data.topics", load, eval_fraction=eval_fraction, kind="builtin")


def stdlib_dir() -> Path:
    """The directory holding the pure-Python standard library (``sysconfig``'s "stdlib", else ``os``'s home).

    Example:
        >>> (stdlib_dir() / "os.py").is_file()
        True
    """
    for candidate in (sysconfig.get_paths().get("stdlib"), os.path.dirname(os.__file__)):
        if candidate and Path(candidate, "os.py").is_file():
            return Path(candidate)
    raise CorpusError(
        "built-in corpus 'python-code' needs the standard library as .py files, but neither "
        f"{sysconfig.get_paths().get('stdlib')!r} nor {os.path.dirname(os.__file__)!r} holds os.py "
        "(a zipped or bytecode-only install); use 'python-docs' or 'unicode-names', or a user file",
        path=str(sysconfig.get_paths().get("stdlib")),
    )


def stdlib_source_files(root: Path) -> list[str]:
    """Sorted posix paths (relative to ``root``) of the stdlib ``.py`` files the python-code domain uses.

    Example:
        >>> "json/decoder.py" in stdlib_source_files(stdlib_dir())
        True
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # prune in place so os.walk never descends into excluded trees (site-packages can be huge)
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(EXCLUDED_PREFIXES)]
        rel_dir = Path(dirpath).relative_to(root)
        for fname in filenames:
            if fname.endswith(".py") and fname not in EXCLUDED_FILES and not fname.startswith(EXCLUDED_PREFIXES):
                found.append((rel_dir / fname).as_posix())
    return sorted(found)


def python_code(eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """Python source code: one document per standard-library ``.py`` file (tests and optional parts left out).

    Example:
        >>> c = python_code()
        >>> c.records("all")[0].key.endswith(".py")
        True
    """
    root = stdlib_dir()

    def load() -> list[Document]:
        docs = []
        for rel in stdlib_source_files(root):
            path = root / rel
            try:
                # tokenize-compatible decoding is overkill: every stdlib source is UTF-8 (PEP 3120)
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise CorpusError(f"cannot read stdlib source {path}: {err}", path=str(path)) from err
            if text.strip():
                docs.append(Document(rel, text))
        return docs

    return Corpus("python-code", str(root), load, eval_fraction=eval_fraction, kind="builtin")


def _glyph(ch: str, category: str) -> str:
    # Controls, format characters and separators are invisible or break lines; marks get a dotted circle base,
    # as Unicode charts print them, so they do not fuse with the space before them.
    if category[0] in "CZ":
        return ""
    if category[0] == "M":
        return "\u25cc" + ch
    return ch


def unicode_line(code_point: int) -> str | None:
    """One table line for a code point, or None when it is unnamed or algorithmically named.

    Example:
        >>> unicode_line(0xC0)
        'U+00C0 À LATIN CAPITAL LETTER A WITH GRAVE (Lu)'
        >>> unicode_line(0x4E00) is None
        True
    """
    ch = chr(code_point)
    name = unicodedata.name(ch, None)
    if name is None or name.startswith(_ALGORITHMIC_NAMES):
        return None
    category = unicodedata.category(ch)
    glyph = _glyph(ch, category)
    return f"U+{code_point:04X} {glyph + ' ' if glyph else ''}{name} ({category})"


def unicode_names(eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """The Unicode character table of ``unicodedata``: one document per 128-code-point chunk with named characters.

    Example:
        >>> c = unicode_names()
        >>> c.records("all")[0].text.splitlines()[0]
        'U+0020 SPACE (Zs)'
    """

    def load() -> list[Document]:
        docs = []
        for start in range(0, 0x110000, UNICODE_CHUNK):
            lines = [line for cp in range(start, start + UNICODE_CHUNK) if (line := unicode_line(cp)) is not None]
            if lines:
                docs.append(Document(f"U+{start:04X}", "\n".join(lines) + "\n"))
        return docs

    return Corpus(
        "unicode-names",
        "unicodedata",
        load,
        eval_fraction=eval_fraction,
        kind="builtin",
        meta={"unicode_version": unicodedata.unidata_version},
    )


BUILTIN_CORPORA = {"python-docs": python_docs, "python-code": python_code, "unicode-names": unicode_names}
