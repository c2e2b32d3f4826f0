import pytest

import hybridtune.conversion as hc
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.cli import main
from hybridtune.models import load_model
from hybridtune.testing import tiny_model, tiny_tokenizer

nir = pytest.importorskip("nir", reason="NIR export needs the nir extra: pip install 'hybridtune[nir]'")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nir")
    tiny_model("llama").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    snn = hc.convert(load_model(str(root / "base")), hc.ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    hc.save_spiking(snn, root / "snn")
    cfg = spiking_lora_config(r=4, neuron="lif", init_b_std=0.1, target_modules=["up_proj"])
    get_spiking_peft_model(snn, cfg).save_pretrained(root / "adapter")
    return {"base": str(root / "base"), "snn": str(root / "snn"), "adapter": str(root / "adapter")}


def test_export_writes_a_readable_file_and_lists_what_was_left_out(dirs, tmp_path, capsys):
    out = tmp_path / "m.nir"
    assert main(["export-nir", "--model", dirs["base"], "--spiking", dirs["snn"], "--adapter", dirs["adapter"],
                 "--out", str(out), "--blocks", "1"]) == 0
    printed = capsys.readouterr().out
    assert "left out" in printed and "softmax" in printed and "rotary" in printed
    graph = nir.read(out)
    assert {name.split(".", 1)[0] for name, node in graph.nodes.items() if isinstance(node, nir.NIRGraph)} == {"block0"}
    assert any(k.startswith("lora.default.") for k in graph.nodes["block0.mlp.up_proj"].nodes)


@pytest.mark.parametrize("argv, culprit", [
    (["--spiking", "/nonexistent/snn", "--out", "OUT"], "/nonexistent/snn"),
    (["--spiking", "SNN", "--out", "OUT", "--blocks", "7"], "--blocks 7"),
    (["--spiking", "SNN", "--out", "OUT", "--blocks", "0"], "--blocks 0"),
    (["--spiking", "SNN", "--out", "file.txt"], "must end in .nir"),
    (["--spiking", "SNN", "--adapter", "/nonexistent/ad", "--out", "OUT"], "/nonexistent/ad"),
])
def test_bad_input_exits_2_naming_the_culprit(dirs, tmp_path, capsys, argv, culprit):
    argv = [a.replace("SNN", dirs["snn"]).replace("OUT", str(tmp_path / "x.nir")) for a in argv]
    assert main(["export-nir", "--model", dirs["base"], *argv]) == 2
    assert culprit in capsys.readouterr().err
    assert not (tmp_path / "x.nir").exists()


def test_existing_output_needs_force(dirs, tmp_path, capsys):
    out = tmp_path / "keep.nir"
    out.write_text("precious")
    assert main(["export-nir", "--model", dirs["base"], "--spiking", dirs["snn"], "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err and out.read_text() == "precious"
