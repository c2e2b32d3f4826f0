"""The ``hybridtune`` lm-eval model type on a tiny local task (no download): all three request types, accounting
beside the scores, and the scores held against a direct computation."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hybridtune.conversion as hc
from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
from hybridtune.models import load_model
from hybridtune.testing import tiny_model, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval", reason="the lm-eval integration needs the eval extra: "
                                                "pip install 'hybridtune[eval]'")

MC = [{"ctx": "the cat sat on the", "choices": [" mat", " sky", " code"], "label": 0},
      {"ctx": "one two", "choices": [" three", " four", " zz"], "label": 0}]
DOCS = [{"text": "hello world, " * 3}, {"text": "the quick brown fox"}]
GEN = [{"q": "ab", "a": "c"}]


def _write_tasks(root: Path) -> Path:
    tasks = root / "tasks"
    tasks.mkdir()
    for name, rows in (("mc", MC), ("docs", DOCS), ("gen", GEN)):
        (tasks / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    common = "dataset_path: json\ntest_split: test\n"
    (tasks / "ht_mc.yaml").write_text(
        f"task: ht_mc\n{common}dataset_kwargs:\n  data_files:\n    test: {tasks / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n")
    (tasks / "ht_docs.yaml").write_text(
        f"task: ht_docs\n{common}dataset_kwargs:\n  data_files:\n    test: {tasks / 'docs.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    (tasks / "ht_gen.yaml").write_text(
        f"task: ht_gen\n{common}dataset_kwargs:\n  data_files:\n    test: {tasks / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 3\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return tasks


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmeval")
    tiny_model("llama").save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    snn = hc.convert(load_model(str(root / "base")), hc.ConversionConfig(coverage=("ffn_act", "linear_inputs"), compensation=False))
    hc.save_spiking(snn, root / "snn")
    cfg = spiking_lora_config(r=4, neuron="lif", threshold=0.01, init_b_std=0.5, target_modules=["q_proj", "up_proj"])
    get_spiking_peft_model(snn, cfg).save_pretrained(root / "adapter")
    return {"root": root, "base": str(root / "base"), "snn": str(root / "snn"), "adapter": str(root / "adapter"),
            "tasks": _write_tasks(root)}


def _evaluate(setup, model_args: str):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import hybridtune.integrations.lm_eval  # noqa: F401 - registers the model type

    manager = TaskManager(include_path=str(setup["tasks"]), include_defaults=False)
    return simple_evaluate(model="hybridtune", model_args=model_args, tasks=["ht_mc", "ht_docs", "ht_gen"],
                           task_manager=manager, log_samples=False)


def test_all_request_types_run_and_accounting_is_written(setup):
    acc_file = setup["root"] / "acc.json"
    results = _evaluate(setup, f"model={setup['base']},spiking={setup['snn']},adapter={setup['adapter']},"
                               f"accounting={acc_file}")["results"]
    assert 0.0 <= results["ht_mc"]["acc,none"] <= 1.0
    assert results["ht_docs"]["word_perplexity,none"] > 1.0
    assert "exact_match,none" in results["ht_gen"]
    report = json.loads(acc_file.read_text())
    assert report["total"]["spikes"] > 0 and report["tokens"] > 0
    assert report["model"]["adapter"] == setup["adapter"]


def test_rolling_loglikelihood_equals_a_direct_forward(setup):
    from lm_eval.api.instance import Instance

    from hybridtune.integrations.lm_eval import HybridtuneLM

    lm = HybridtuneLM(model=setup["base"], spiking=setup["snn"], adapter=setup["adapter"])
    text = DOCS[0]["text"]
    req = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    got = lm.loglikelihood_rolling([req])[0]
    ids = [lm.prefix_id] + lm._encode(text)
    with torch.no_grad():
        logits = lm.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    want = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None]).sum().item()
    assert math.isclose(got, want, rel_tol=1e-5)
    ll = lm.loglikelihood([Instance(request_type="loglikelihood", doc={}, arguments=("hello", " world"), idx=0)])
    assert ll[0][0] < 0


def test_ann_is_scored_without_accounting_and_bad_dirs_are_named(setup, tmp_path):
    from hybridtune.integrations.lm_eval import HybridtuneLM

    assert HybridtuneLM(model=setup["base"]).counted is False
    with pytest.raises(ValueError, match="spiking=/nonexistent"):
        HybridtuneLM(model=setup["base"], spiking="/nonexistent")


@pytest.mark.slow
def test_lm_eval_command_line_with_the_registered_model(setup, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "hybridtune.integrations.lm_eval", "--model", "hybridtune", "--model_args",
         f"model={setup['base']},spiking={setup['snn']}", "--tasks", "ht_mc", "--include_path", str(setup["tasks"]),
         "--output_path", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "spikes/neuron" in proc.stderr
    assert "ht_mc" in proc.stdout and "acc" in proc.stdout
