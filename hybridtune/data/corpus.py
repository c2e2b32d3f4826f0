"""The `Corpus` object: documents with a deterministic train / eval split and a content hash.

A document is assigned to the eval split when a hash of its *split key* falls below ``eval_fraction``. The key is
stable metadata (a topic name, a relative file path) where there is one, else the text itself, so the split does
not move when documents are added, removed or reordered, and it does not depend on the Python version, the
platform or ``PYTHONHASHSEED`` (sha256, not ``hash()``).

Example:
    >>> c = Corpus.from_texts("toy", ["alpha", "beta", "gamma", "delta"], eval_fraction=0.25)
    >>> sorted(c.documents("train") + c.documents("eval")) == sorted(c.documents("all"))
    True
    >>> len(c.content_hash("eval"))
    64
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "eval", "all")
DEFAULT_EVAL_FRACTION = 0.1
# Bumping this salt reshuffles every split; never change it silently (results record content hashes).
_SPLIT_SALT = b"hybridtune-split-v1:"


class CorpusError(ValueError):
    """Bad corpus input: an unknown name, a missing / empty / unreadable file, a bad option.

    ``path`` holds the offending path (or name) when there is one.

    Example:
        >>> try:
        ...     raise CorpusError("no such file", path="/x.txt")
        ... except ValueError as err:
        ...     err.path
        '/x.txt'
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass(frozen=True)
class Document:
    """One document: ``key`` decides its split, ``text`` is the content.

    Example:
        >>> Document("os.py", "import abc").key
        'os.py'
    """

    key: str
    text: str


def split_score(key: str) -> float:
    """Position of a split key in [0, 1): the first 8 bytes of a salted sha256, as a fraction.

    Example:
        >>> 0.0 <= split_score("json/decoder.py") < 1.0
        True
    """
    digest = hashlib.sha256(_SPLIT_SALT + key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_eval_fraction(eval_fraction: float) -> float:
    """Validate ``eval_fraction`` (strictly between 0 and 1) and return it as a float.

    Example:
        >>> check_eval_fraction(0.1)
        0.1
    """
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise CorpusError(f"eval_fraction must be a number strictly between 0 and 1, got {eval_fraction!r}")
    return float(eval_fraction)


def assign_splits(keys: Sequence[str], eval_fraction: float) -> list[bool]:
    """Return ``is_eval`` per key: score below ``eval_fraction``.

    With two or more documents both splits are kept non-empty: if no score falls below the fraction, the
    lowest-scoring document goes to eval; if all do, the highest-scoring one goes to train. Both choices depend on
    the keys only, so they are as deterministic as the rule itself.

    Example:
        >>> assign_splits(["a"], 0.1)
        [False]
        >>> sum(assign_splits([str(i) for i in range(1000)], 0.1)) in range(70, 131)
        True
    """
    eval_fraction = check_eval_fraction(eval_fraction)
    scores = [split_score(k) for k in keys]
    is_eval = [s < eval_fraction for s in scores]
    if len(keys) >= 2:
        if not any(is_eval):
            is_eval[min(range(len(keys)), key=scores.__getitem__)] = True
        elif all(is_eval):
            is_eval[max(range(len(keys)), key=scores.__getitem__)] = False
    return is_eval


def tail_split(doc: Document, eval_fraction: float) -> tuple[Document, Document] | None:
    r"""Cut one document into a head (train) and its last ``eval_fraction`` (eval), at the line break (else the
    space) nearest the cut; None when it has no such break (see :func:`tail_holdout`).

    Example:
        >>> head, tail = tail_split(Document("k", "a\nb\nc\nd"), 0.25)
        >>> (head.text, tail.text, tail.key)
        ('a\nb\nc', 'd', 'k#tail')
    """
    text = doc.text.rstrip()
    target = int(len(text) * (1 - eval_fraction))
    for sep in ("\n", " "):
        before, after = text.rfind(sep, 0, target + 1), text.find(sep, target)
        cuts = [c for c in (before, after) if 0 < c < len(text) - 1]
        if cuts:
            cut = min(cuts, key=lambda c: abs(c - target))
            head, tail = text[:cut].rstrip(), text[cut + 1:].strip()
            if head.strip() and tail:
                return Document(doc.key + "#head", head), Document(doc.key + "#tail", tail)
    return None


def tail_holdout(docs: Sequence[Document], eval_fraction: float) -> tuple[list[Document], list[Document]] | None:
    """(train, eval): the last ``eval_fraction`` of the documents' characters held out, whole trailing documents
    first, then the end of the one before cut with :func:`tail_split`; None when nothing can be cut.

    Example:
        >>> train, held = tail_holdout([Document("a", "x" * 80), Document("b", "one two three four")], 0.1)
        >>> [d.key for d in train], [d.text for d in held]
        (['a', 'b#head'], ['three four'])
    """
    total = sum(len(d.text) for d in docs)
    want = total * eval_fraction
    held: list[Document] = []
    rest = list(docs)
    while len(rest) > 1 and sum(len(d.text) for d in held) + len(rest[-1].text) <= want:
        held.insert(0, rest.pop())
    remaining = want - sum(len(d.text) for d in held)
    if remaining > 0:
        last = rest[-1]
        cut = tail_split(last, min(0.9, remaining / max(1, len(last.text))))
        if cut is not None:
            rest[-1] = cut[0]
            held.insert(0, cut[1])
    return (rest, held) if held and rest else None


def content_hash(texts: Iterable[str]) -> str:
    """sha256 (hex) over documents in order; each is length-prefixed so boundaries count.

    Example:
        >>> content_hash(["ab", "c"]) != content_hash(["a", "bc"])
        True
    """
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def python_info() -> dict[str, str]:
    """The interpreter facts built-in corpora depend on (their content changes between Python versions).

    Example:
        >>> sorted(python_info())
        ['implementation', 'version']
    """
    return {"version": platform.python_version(), "implementation": platform.python_implementation()}


@dataclass
class Corpus:
    """A named list of documents with a deterministic train / eval split.

    ``loader`` returns the documents (in their canonical order) and is called once, on first use. Build one from
    plain strings with :meth:`from_texts`; open a built-in or a user file with :func:`hybridtune.data.corpus`.

    Example:
        >>> c = Corpus.from_texts("toy", ["one", "two", "three"])
        >>> c.describe()["splits"]["all"]["documents"]
        3
        >>> c.text("all", sep="|")
        'one|two|three'
    """

    name: str
    source: str
    loader: Callable[[], list[Document]]
    eval_fraction: float = DEFAULT_EVAL_FRACTION
    kind: str = "user"
    meta: dict[str, Any] = field(default_factory=dict)
    # with fewer documents than this, the end of the text is held out (tail_holdout) instead of whole documents
    hash_split_from: int = 2
    _splits: dict[str, list[Document]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.eval_fraction = check_eval_fraction(self.eval_fraction)

    @classmethod
    def from_texts(
        cls,
        name: str,
        texts: Iterable[str],
        *,
        keys: Iterable[str] | None = None,
        eval_fraction: float = DEFAULT_EVAL_FRACTION,
        source: str = "memory",
        meta: dict[str, Any] | None = None,
    ) -> Corpus:
        """A corpus over in-memory strings; split keys default to the texts themselves.

        Example:
            >>> Corpus.from_texts("toy", ["a", "b"], keys=["k1", "k2"]).documents("all")
            ['a', 'b']
        """
        texts = list(texts)
        keys = texts if keys is None else list(keys)
        if len(keys) != len(texts):
            raise CorpusError(f"corpus {name!r}: {len(keys)} keys for {len(texts)} texts")
        docs = [Document(k, t) for k, t in zip(keys, texts)]
        return cls(name, source, lambda: docs, eval_fraction=eval_fraction, meta=dict(meta or {}))

    def _load(self) -> dict[str, list[Document]]:
        if self._splits is None:
            docs = list(self.loader())
            if not docs:
                raise CorpusError(f"corpus {self.name!r} from {self.source} has no documents", path=self.source)
            if len(docs) < self.hash_split_from and (cut := tail_holdout(docs, self.eval_fraction)) is not None:
                # too few documents to hold some out whole: hold out the end of the text instead, and say so
                self._splits = {"all": docs, "train": cut[0], "eval": cut[1]}
                self.meta["split_rule"] = (f"{len(docs)} document(s), too few to hold whole ones out, so the last "
                                           f"{self.eval_fraction:.0%} of the text is held out")
                return self._splits
            is_eval = assign_splits([d.key for d in docs], self.eval_fraction)
            self._splits = {
                "all": docs,
                "train": [d for d, e in zip(docs, is_eval) if not e],
                "eval": [d for d, e in zip(docs, is_eval) if e],
            }
            self.meta["split_rule"] = (f"{len(docs)} documents, {self.eval_fraction:.0%} of them held out (chosen by "
                                       "a hash of each one's key)")
        return self._splits

    def records(self, split: str = "train") -> list[Document]:
        """The split's documents with their split keys, in canonical order.

        Example:
            >>> Corpus.from_texts("toy", ["x"]).records("all")[0].key
            'x'
        """
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r} for corpus {self.name!r}; choose one of {', '.join(SPLITS)}")
        docs = self._load()[split]
        if not docs:
            total = len(self._load()["all"])
            raise CorpusError(
                f"split {split!r} of corpus {self.name!r} is empty ({total} document(s) in all, too short to "
                "cut); add text, or name a separate held-out corpus (data.eval=PATH, or eval --split train)",
                path=self.source,
            )
        return docs

    def documents(self, split: str = "train") -> list[str]:
        """The split's document texts ("train", "eval" or "all").

        Example:
            >>> Corpus.from_texts("toy", ["x", "y"]).documents("all")
            ['x', 'y']
        """
        return [d.text for d in self.records(split)]

    def text(self, split: str = "train", sep: str = "\n\n") -> str:
        """The split's documents joined with ``sep``.

        Example:
            >>> Corpus.from_texts("toy", ["x", "y"]).text("all")
            'x\\n\\ny'
        """
        return sep.join(self.documents(split))

    def content_hash(self, split: str = "train") -> str:
        """sha256 (hex) of the split's documents; record it with every result computed on the split.

        Example:
            >>> c = Corpus.from_texts("toy", ["x", "y"])
            >>> c.content_hash("all") == Corpus.from_texts("other", ["x", "y"]).content_hash("all")
            True
        """
        return content_hash(self.documents(split))

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts: name, kind, source, Python version, per-split sizes and hashes, extra metadata.

        An empty split (possible only for a one-document corpus) is reported with 0 documents and no hash.

        Example:
            >>> d = Corpus.from_texts("toy", ["x", "y"]).describe()
            >>> sorted(d["splits"]), d["splits"]["eval"]["documents"]
            (['all', 'eval', 'train'], 1)
        """
        splits = {}
        for split, docs in self._load().items():
            splits[split] = {
                "documents": len(docs),
                "characters": sum(len(d.text) for d in docs),
                "content_hash": content_hash(d.text for d in docs) if docs else None,
            }
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "python": python_info(),
            "eval_fraction": self.eval_fraction,
            "splits": {s: splits[s] for s in ("train", "eval", "all")},
            **self.meta,
        }

    def __repr__(self) -> str:
        return f"Corpus(name={self.name!r}, kind={self.kind!r}, source={self.source!r})"
