"""Damaged saved conversions fail naming the file and the remedy; a damaged conversion-cache entry is detected
(its files are hashed when cached), deleted and rebuilt, so one bad entry does not break every later run."""

from __future__ import annotations

import pytest
import torch

from hybridtune.config import ConversionSection
from hybridtune.conversion import ConversionConfig, convert, load_spiking, save_spiking
from hybridtune.conversion.state import JSON_NAME, TENSORS_NAME
from hybridtune.files import FileError
from hybridtune.testing import tiny_batch, tiny_model
from hybridtune.trainers.cache import MANIFEST, cached_conversion, verify_entry


@pytest.mark.parametrize("target, content", [(JSON_NAME, b"{garbage"), (JSON_NAME, b""), (TENSORS_NAME, None)])
def test_a_damaged_saved_conversion_names_the_file_and_the_remedy(tmp_path, target, content):
    save_spiking(convert(tiny_model("llama"), ConversionConfig(compensation=False)), tmp_path / "snn")
    path = tmp_path / "snn" / target
    path.write_bytes(content if content is not None else path.read_bytes()[:40])
    with pytest.raises(FileError) as err:
        load_spiking(tiny_model("llama"), tmp_path / "snn")
    assert str(path) in str(err.value) and "convert again" in str(err.value)


def _section():
    return ConversionSection(compensation=False)


def test_the_cache_verifies_entries_and_rebuilds_a_damaged_one(tmp_path):
    cache = tmp_path / "entry"
    snn, info = cached_conversion(tiny_model("llama"), _section(), cache_dir=cache)
    assert not info["hit"] and (cache / MANIFEST).is_file() and verify_entry(cache, info["key"]) is None
    with torch.no_grad():
        want = snn(**tiny_batch()).logits
    _, again = cached_conversion(tiny_model("llama"), _section(), cache_dir=cache)
    assert again["hit"]

    tensors = cache / TENSORS_NAME
    data = bytearray(tensors.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the values: safetensors itself would load it without a word
    tensors.write_bytes(bytes(data))
    assert "differs from the hash" in verify_entry(cache, info["key"])
    with pytest.warns(UserWarning, match="damaged.*rebuilding.*--no-cache"):
        rebuilt, third = cached_conversion(tiny_model("llama"), _section(), cache_dir=cache)
    assert not third["hit"] and verify_entry(cache, info["key"]) is None
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(**tiny_batch()).logits, want, rtol=0, atol=0)

    (cache / JSON_NAME).write_text("")  # an empty metadata file (a power loss mid-write)
    with pytest.warns(UserWarning, match="damaged"):
        _, fourth = cached_conversion(tiny_model("llama"), _section(), cache_dir=cache)
    assert not fourth["hit"]
    _, fifth = cached_conversion(tiny_model("llama"), _section(), cache_dir=cache)
    assert fifth["hit"]


def test_a_torn_entry_without_its_metadata_is_rebuilt_not_an_error(tmp_path):
    cache = tmp_path / "entry"
    cache.mkdir()
    (cache / TENSORS_NAME).write_bytes(b"half")  # killed before spiking.json was written by an older version
    with pytest.warns(UserWarning, match="damaged"):
        _, info = cached_conversion(tiny_model("llama"), _section(), cache_dir=cache)
    assert not info["hit"] and verify_entry(cache, info["key"]) is None
