"""The names at the top of the package resolve to the same objects whatever was imported before them."""

from __future__ import annotations

import subprocess
import sys

import pytest

import hybridtune as ht

ORDERS = {
    "package first": "import hybridtune as ht\nfrom hybridtune.conversion import ConversionConfig\n",
    "subpackage first": "from hybridtune.conversion import ConversionConfig\nimport hybridtune as ht\n",
    "data first": "from hybridtune.data import corpus\nimport hybridtune as ht\n",
}


@pytest.mark.parametrize("order", ORDERS)
def test_convert_is_the_function_in_any_import_order(order):
    script = ORDERS[order] + (
        "from hybridtune.testing import tiny_model\n"
        "snn = ht.convert(tiny_model('llama'), ht.ConversionConfig(coverage=('ffn_act',), compensation=False))\n"
        "print(type(snn).__name__, callable(ht.convert))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["LlamaForCausalLM", "True"]


def test_every_public_name_resolves():
    for name in ht.__all__:
        assert getattr(ht, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ht.nope  # noqa: B018
