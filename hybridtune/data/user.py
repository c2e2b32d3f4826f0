"""User corpora: local ``.txt``, ``.jsonl`` / ``.json`` and ``.parquet`` files (or a directory of one kind).

- ``.txt``: a single file is cut into documents at blank lines (``sample_by="paragraph"``, the default for a file,
  so that one file still gives a train and an eval split); in a directory of at least ``FILES_AS_DOCUMENTS`` files
  each file is one document (``sample_by="document"``), in a smaller one each file is cut at blank lines too (a
  held-out file would be most of the text). ``sample_by="line"`` makes every non-blank line a document. A corpus
  that is still one document holds out its end (see :func:`hybridtune.data.corpus.tail_split`).
- ``.jsonl`` / ``.json`` / ``.parquet``: read with ``datasets.load_dataset("json" | "parquet", data_files=...)``
  (packaged builders: nothing is fetched); one row = one document, text in ``text_field`` (default ``"text"``).

Split keys: a file's relative path when one file is one document, ``id_field``'s value when given, else the text
itself (so duplicate documents always land in the same split). Blank documents are skipped. Files are read when
the corpus is opened, so a missing, empty or unreadable input fails at once with a :class:`CorpusError` naming the
path and what is accepted.

Example:
    >>> import pathlib, tempfile
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "notes.txt"
    >>> _ = p.write_text("first paragraph\\n\\nsecond one\\n")
    >>> user_corpus(p).documents("all")
    ['first paragraph', 'second one']
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .corpus import DEFAULT_EVAL_FRACTION, Corpus, CorpusError, Document

FORMATS = {".txt": "txt", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SAMPLE_BY = ("document", "paragraph", "line")
FILES_AS_DOCUMENTS = 10  # a directory with fewer files is cut into paragraphs by default
ACCEPTED = "a .txt, .jsonl, .json or .parquet file, or a directory of such files (one kind)"
_BLANK_LINE = re.compile(r"\n(?:[ \t\f\v]*\n)+")  # one or more blank (or whitespace-only) lines


def _fail(message: str, path: Path | str) -> CorpusError:
    return CorpusError(message, path=str(path))


def _files_of(path: Path) -> tuple[str, list[Path]]:
    """The format and sorted files of a corpus path; raises for anything not accepted."""
    if not path.exists():
        raise _fail(f"corpus path {str(path)!r} does not exist; expected {ACCEPTED}", path)
    if path.is_file():
        fmt = FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise _fail(f"unsupported file type {path.suffix or '(none)'!r} for corpus {str(path)!r}; "
                        f"expected {ACCEPTED}", path)
        return fmt, [path]
    if not path.is_dir():
        raise _fail(f"corpus path {str(path)!r} is neither a file nor a directory; expected {ACCEPTED}", path)
    files = sorted(
        p for p in path.rglob("*")
        if p.is_file() and p.suffix.lower() in FORMATS
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise _fail(f"corpus directory {str(path)!r} holds no .txt, .jsonl, .json or .parquet files", path)
    kinds = sorted({FORMATS[p.suffix.lower()] for p in files})
    if len(kinds) > 1:
        raise _fail(f"corpus directory {str(path)!r} mixes formats ({', '.join(kinds)}); keep one kind per "
                    "directory", path)
    return kinds[0], files


def _read_text(path: Path, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as err:
        raise _fail(f"corpus file {str(path)!r} is not valid {encoding} text (byte {err.start}: {err.reason}); "
                    "name its encoding with data.encoding=latin-1 (or cp1252, utf-16, ...; `hybridtune eval "
                    "--encoding`), or convert the file to UTF-8", path) from err
    except OSError as err:
        raise _fail(f"cannot read corpus file {str(path)!r}: {err.strerror or err}", path) from err


def _split_text(text: str, sample_by: str) -> list[str]:
    if sample_by == "document":
        pieces = [text]
    elif sample_by == "paragraph":
        pieces = [p.strip("\n") for p in _BLANK_LINE.split(text)]
    else:
        pieces = text.splitlines()
    return [p for p in pieces if p.strip()]


def _txt_documents(root: Path, files: list[Path], sample_by: str, encoding: str) -> list[Document]:
    docs = []
    for f in files:
        text = _read_text(f, encoding)
        if not text.strip():
            # one empty file among many is fine; the whole corpus being empty is caught below
            continue
        if sample_by == "document":
            key = f.name if f == root else f.relative_to(root).as_posix()
            docs.append(Document(key, text))
        else:
            docs.extend(Document(p, p) for p in _split_text(text, sample_by))
    return docs


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence `datasets` progress bars for one call, restoring the caller's setting afterwards."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _table_rows(path: Path, files: list[Path], fmt: str, cache_dir: str | None) -> Any:
    import datasets

    for f in files:
        if f.stat().st_size == 0:
            raise _fail(f"corpus file {str(f)!r} is empty; expected {ACCEPTED} with at least one document", f)
    try:
        with _quiet_datasets():
            return datasets.load_dataset(fmt, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
    except Exception as err:  # datasets raises many types (DatasetGenerationError, ArrowInvalid, OSError, ...)
        if fmt == "json" and (where := _first_bad_json_line(files)) is not None:
            raise _fail(f"cannot read {where[0]!r}: line {where[1]} is not a JSON object ({where[2]}); fix or "
                        "remove that line (JSON lines: one object such as {\"text\": \"...\"} per line)",
                        where[0]) from err
        raise _fail(f"cannot read {fmt} corpus {str(path)!r}: {type(err).__name__}: {err}; expected {ACCEPTED} "
                    "(JSON lines with one object per row, or a valid parquet file)", path) from err


def _first_bad_json_line(files: list[Path]) -> tuple[str, int, str] | None:
    """(file, 1-based line, reason) of the first line of a ``.jsonl`` file that is not a JSON object."""
    import json

    for f in files:
        if f.suffix.lower() != ".jsonl":
            continue
        with f.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    return str(f), number, exc.msg
                if not isinstance(row, dict):
                    return str(f), number, f"a {type(row).__name__}, not an object"
    return None


def dataset_documents(dataset: Any, text_field: str = "text", id_field: str | None = None,
                      where: str = "dataset") -> list[Document]:
    """Documents from a `datasets.Dataset` (or anything with ``column_names`` and column indexing).

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"text": ["a", " ", "b"]})
        >>> [d.text for d in dataset_documents(ds)]
        ['a', 'b']
    """
    columns = list(dataset.column_names)
    for fld, role in ((text_field, "text_field"), (id_field, "id_field")):
        if fld is not None and fld not in columns:
            remedy = "set data.text_field=<one of them> (eval: --text-field)" if role == "text_field" else \
                "name one of them as id_field"
            raise CorpusError(f"{where}: no field {fld!r} for {role}; fields present: {', '.join(columns) or '(none)'}"
                              f"; {remedy}", path=where)
    texts = list(dataset[text_field])
    ids = list(dataset[id_field]) if id_field is not None else texts
    docs = []
    for row, (key, text) in enumerate(zip(ids, texts)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise CorpusError(f"{where}: row {row} field {text_field!r} is {type(text).__name__}, not a string",
                              path=where)
        if text.strip():
            docs.append(Document(str(key), text))
    return docs


def from_dataset(dataset: Any, *, name: str = "dataset", text_field: str = "text", id_field: str | None = None,
                 eval_fraction: float = DEFAULT_EVAL_FRACTION) -> Corpus:
    """A corpus over an in-memory `datasets.Dataset` (e.g. one loaded from the local cache).

    Example:
        >>> import datasets
        >>> ds = datasets.Dataset.from_dict({"text": ["a", "b", "c"]})
        >>> from_dataset(ds, name="abc").documents("all")
        ['a', 'b', 'c']
    """
    docs = dataset_documents(dataset, text_field, id_field, where=f"dataset {name!r}")
    if not docs:
        raise CorpusError(f"dataset {name!r} has no non-blank {text_field!r} values", path=name)
    return Corpus(name, f"datasets.Dataset({len(dataset)} rows)", lambda: docs, eval_fraction=eval_fraction,
                  meta={"format": "dataset", "text_field": text_field, "id_field": id_field})


def user_corpus(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    sample_by: str | None = None,
    text_field: str = "text",
    id_field: str | None = None,
    encoding: str = "utf-8",
    cache_dir: str | None = None,
) -> Corpus:
    """Open a local corpus file or directory (see the module docstring for formats and splitting).

    ``sample_by`` applies to ``.txt`` ("document", "paragraph", "line"; default "paragraph", except "document" for
    a directory of at least ``FILES_AS_DOCUMENTS`` files); ``text_field`` / ``id_field`` to jsonl / parquet; ``cache_dir`` is passed to
    `datasets` (its arrow cache).

    Example:
        >>> import pathlib, tempfile
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.txt").write_text("doc a"); _ = (d / "b.txt").write_text("doc b")
        >>> [r.key for r in user_corpus(d, sample_by="document").records("all")]
        ['a.txt', 'b.txt']
    """
    given = Path(os.fspath(path)).expanduser()
    fmt, files = _files_of(given)
    if sample_by is None:
        sample_by = "document" if given.is_dir() and len(files) >= FILES_AS_DOCUMENTS else "paragraph"
    if sample_by not in SAMPLE_BY:
        raise _fail(f"data.sample_by={sample_by!r} is not one of {', '.join(SAMPLE_BY)} (corpus {str(given)!r})",
                    given)
    if fmt == "txt":
        docs = _txt_documents(given, files, sample_by, encoding)
        meta: dict[str, Any] = {"format": fmt, "files": len(files), "sample_by": sample_by}
    else:
        table = _table_rows(given, files, fmt, cache_dir)
        docs = dataset_documents(table, text_field, id_field, where=f"corpus {str(given)!r}")
        meta = {"format": fmt, "files": len(files), "text_field": text_field, "id_field": id_field}
    if not docs:
        raise _fail(f"corpus {str(given)!r} is empty: no non-blank documents; expected {ACCEPTED} with text in it",
                    given)
    corpus = Corpus(name or os.fspath(path), str(given.resolve()), lambda: docs, eval_fraction=eval_fraction,
                    kind="user", meta=meta, hash_split_from=FILES_AS_DOCUMENTS)
    corpus.records("all")  # split now, so bad options surface when the corpus is opened
    return corpus
