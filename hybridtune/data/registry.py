"""One entry point, :func:`corpus`, over an open registry of named corpora and user paths.

Example:
    >>> corpus("python-docs").name
    'python-docs'
    >>> "unicode-names" in available_corpora()
    True
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .builtin import BUILTIN_CORPORA
from .corpus import Corpus, CorpusError
from .user import ACCEPTED, FORMATS, from_dataset, user_corpus

_REGISTRY: dict[str, Callable[..., Corpus]] = dict(BUILTIN_CORPORA)


def register_corpus(name: str, factory: Callable[..., Corpus], *, overwrite: bool = False) -> None:
    """Make ``corpus(name, **options)`` call ``factory(**options)``, which must return a :class:`Corpus`.

    Example:
        >>> register_corpus("toy-abc", lambda eval_fraction=0.1: Corpus.from_texts("toy-abc", "abc",
        ...                                                                      eval_fraction=eval_fraction))
        >>> corpus("toy-abc").documents("all")
        ['a', 'b', 'c']
        >>> unregister_corpus("toy-abc")
    """
    if not isinstance(name, str) or not name or name != name.strip():
        raise CorpusError(f"corpus name must be a non-empty string without surrounding spaces, got {name!r}")
    if not callable(factory):
        raise CorpusError(f"factory for corpus {name!r} must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise CorpusError(f"corpus {name!r} is already registered; pass overwrite=True to replace it", path=name)
    _REGISTRY[name] = factory


def unregister_corpus(name: str) -> None:
    """Remove a registered corpus (built-ins included); unknown names raise.

    Example:
        >>> register_corpus("tmp-one", lambda: Corpus.from_texts("tmp-one", ["x"]))
        >>> unregister_corpus("tmp-one"); "tmp-one" in available_corpora()
        False
    """
    if name not in _REGISTRY:
        raise CorpusError(f"corpus {name!r} is not registered; registered: {', '.join(available_corpora())}",
                          path=name)
    del _REGISTRY[name]


def available_corpora() -> list[str]:
    """Sorted names of the registered corpora.

    Example:
        >>> available_corpora()[:3]
        ['python-code', 'python-docs', 'unicode-names']
    """
    return sorted(_REGISTRY)


def _looks_like_path(text: str) -> bool:
    return (
        Path(text).expanduser().exists()
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or Path(text).suffix.lower() in FORMATS
    )


def _call_factory(name: str, factory: Callable[..., Corpus], options: dict[str, Any]) -> Corpus:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins / C callables have no signature: just call
        signature = None
    if signature is not None:
        try:
            signature.bind(**options)
        except TypeError as err:
            accepted = [p.name for p in signature.parameters.values()
                        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
            raise CorpusError(f"corpus {name!r}: bad options {sorted(options)} ({err}); accepted options: "
                              f"{', '.join(accepted) or '(none)'}", path=name) from err
    result = factory(**options)
    if not isinstance(result, Corpus):
        raise CorpusError(f"factory for corpus {name!r} returned {type(result).__name__}, not a Corpus", path=name)
    return result


def corpus_options(name: str, *, text_field: str = "text", sample_by: str | None = None,
                   encoding: str = "utf-8") -> dict[str, Any]:
    """The options of a run config's ``data`` section that apply to corpus ``name`` (none for a registered name;
    ``text_field`` for jsonl / parquet; ``sample_by`` and ``encoding`` for text files and directories).

    Example:
        >>> corpus_options("python-docs", encoding="latin-1"), corpus_options("notes.jsonl")
        ({}, {'text_field': 'text'})
    """
    if name in _REGISTRY:
        return {}
    suffix = Path(name).suffix.lower()
    if suffix in FORMATS and FORMATS[suffix] != "txt":
        return {"text_field": text_field}
    return {"sample_by": sample_by, "encoding": encoding}


def corpus(name_or_path: str | os.PathLike[str] | Corpus | Any, **options: Any) -> Corpus:
    """Open a corpus: a registered name, a local file / directory, a `datasets.Dataset`, or a Corpus (returned).

    Registered names win over same-named files in the working directory; write ``./name`` to mean the file.
    Options go to the built-in factory (``eval_fraction``) or to :func:`hybridtune.data.user.user_corpus`
    (``eval_fraction``, ``sample_by``, ``text_field``, ``id_field``, ``encoding``, ``cache_dir``, ``name``).

    Example:
        >>> c = corpus("unicode-names", eval_fraction=0.2)
        >>> c.describe()["eval_fraction"]
        0.2
    """
    if isinstance(name_or_path, Corpus):
        if options:
            raise CorpusError(f"options {sorted(options)} cannot apply to an already opened corpus {name_or_path!r}")
        return name_or_path
    if hasattr(name_or_path, "column_names") and not isinstance(name_or_path, (str, os.PathLike)):
        return from_dataset(name_or_path, **options)
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise CorpusError(f"corpus() takes a name, a path or a datasets.Dataset, got {type(name_or_path).__name__}")
    text = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and text in _REGISTRY:
        return _call_factory(text, _REGISTRY[text], options)
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        try:
            inspect.signature(user_corpus).bind(text, **options)
        except TypeError as err:
            raise CorpusError(f"corpus {text!r}: bad options {sorted(options)} ({err})", path=text) from err
        return user_corpus(text, **options)
    close = difflib.get_close_matches(text, available_corpora(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise CorpusError(
        f"unknown corpus {text!r}: not a registered name ({', '.join(available_corpora())}) and no such file; "
        f"expected a registered name or {ACCEPTED}{hint}",
        path=text,
    )
