"""``hybridtune report DIR``: fidelity, spikes, synaptic operations and energy of a run or a converted model.

- a **run directory** (``hybridtune train --out``): its ``report.json`` is printed (ANN, spiking before and after
  training, on the held-out data, block size and token count the run used). ``--data`` / ``--block-size`` /
  ``--max-tokens`` different from the run's measure the trained model and the ANN again on those (written to
  ``--out``, default ``RUN_DIR/report-<data>-<block>-<tokens>``).
- a **converted model** (``hybridtune convert --out``): the report is computed (perplexity against the ANN plus the
  accounting) and written to ``--out`` (default ``DIR/report``) as JSON and PNGs; a report already there is reused
  only when it was computed for the same model, data, split, block size and token count.

Every perplexity printed names its block size and token count, and the output says where the files are.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

REQUEST_KEY = "request"  # what a saved report was computed for (compared before reusing it)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="a run directory (hybridtune train) or a converted model (hybridtune convert)")
    parser.add_argument("--model", default="default", help="the base model a converted model was made from")
    parser.add_argument("--data", default=None, help="corpus (default: the run's held-out data, else python-docs)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens evaluated (default: the run's, else 2048)")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per block (default: the run's, else 512)")
    parser.add_argument("--out", default=None, help="where to write the report (default: see above)")
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")


def _fail(message: str) -> int:
    print(f"hybridtune report: {message}", file=sys.stderr)
    return 2


def _num(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def _energy_lines(total: dict[str, Any], tokens: int | None) -> list[str]:
    lines = []
    for name, e in (total.get("energy") or {}).items():
        per = max(1, tokens or 1)
        lines.append(f"  energy ({name}): spiking {_num(e.get('snn_pj', 0) / per / 1e6)} uJ/token vs ANN "
                     f"{_num(e.get('ann_pj', 0) / per / 1e6)} uJ/token -> ANN / spiking = {_num(e.get('ratio'), '.2f')}"
                     " (memory traffic not modelled)")
    return lines


def format_run_report(report: dict[str, Any], where: str) -> str:
    """A run's report: perplexities side by side with their data, block size and token count."""
    data = report.get("data") or {}
    held = f"{data.get('eval', '?')} ({data.get('eval_split', 'eval')} split)"
    context = f"block size {data.get('block_size', '?')}, {data.get('eval_tokens', '?')} held-out tokens"
    lines = [f"perplexity on {held}, {context}:",
             f"  ANN (not converted)        {_num(report.get('ppl_ann'))}",
             f"  spiking, before training   {_num(report.get('ppl_spiking_before'))}",
             f"  spiking, after training    {_num(report.get('ppl_spiking_after'))}",
             f"trained {report.get('steps')} steps on {report.get('tokens_trained')} tokens of {data.get('train', '?')}",
             f"spikes per neuron (held-out): {_num(report.get('spikes_per_neuron'), '.4f')}"]
    energy = report.get("energy") or {}
    lines += _energy_lines(energy, energy.get("tokens"))
    lines.append(f"files: {where}")
    return "\n".join(lines)


def format_conversion_report(report: dict[str, Any], where: str) -> str:
    """A converted model's report: ANN beside spiking with block size and token count, then the accounting."""
    request = report.get(REQUEST_KEY) or {}
    t = report.get("total") or {}
    lines = [f"perplexity on {report.get('data')} ({report.get('split', 'eval')} split), block size "
             f"{report.get('block_size')}, at most {request.get('max_tokens', '?')} tokens:",
             f"  ANN (not converted)   {_num(report.get('ppl_ann'))}",
             f"  spiking               {_num(report.get('perplexity'))}  (ratio {_num(report.get('ppl_ratio'), '.4f')})",
             f"accounting on {report.get('tokens')} tokens: spikes per neuron {_num(t.get('spikes_per_neuron'))}, "
             f"SOPs {_num(t.get('sops'), '.4g')}, float MACs {_num(t.get('float_macs'), '.4g')} "
             f"(ANN MACs {_num(t.get('ann_macs'), '.4g')})"]
    lines += _energy_lines(t, report.get("tokens"))
    lines.append(f"files: {where}")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text).name or text).strip("_") or "data"


def _run_report(args: argparse.Namespace, directory: Path) -> int:
    from ..trainers.report import REPORT_FILE

    saved_path = directory / REPORT_FILE
    if not saved_path.is_file():
        return _fail(f"{directory} is a run directory without {REPORT_FILE} (the run has not finished); continue it "
                     f"with `hybridtune train CONFIG --resume --out {directory}`")
    saved = json.loads(saved_path.read_text())
    data = saved.get("data") or {}
    asked = {"data": args.data, "block_size": args.block_size, "max_tokens": args.max_tokens}
    same = {"data": (data.get("eval"),), "block_size": (data.get("block_size"),),
            "max_tokens": (data.get("eval_tokens"),)}
    if all(v is None or v in same[k] for k, v in asked.items()):
        print(json.dumps(saved, indent=2, default=str) if args.json else
              format_run_report(saved, f"{saved_path} (curves.png, accounting/ beside it)"))
        return 0
    return _remeasure_run(args, directory, saved)


def _remeasure_run(args: argparse.Namespace, directory: Path, saved: dict[str, Any]) -> int:
    """The trained model and the ANN on other data / block size / token count than the run's own report."""
    import torch

    from ..data import corpus, corpus_options, pack
    from ..models import load_model
    from ..perplexity import perplexity
    from ..runs import load_run

    model, tokenizer, info = load_run(directory)
    run_data = info.get("data", {})
    name = args.data or run_data.get("eval") or run_data.get("train")
    split = "all" if (args.data is None and run_data.get("eval")) else "eval"
    block = args.block_size or run_data.get("block_size") or 512
    max_tokens = args.max_tokens or run_data.get("eval_tokens") or 2048
    corp = corpus(name, **corpus_options(name, text_field=run_data.get("text_field", "text"),
                                         sample_by=run_data.get("sample_by"),
                                         encoding=run_data.get("encoding", "utf-8")))
    blocks = pack(tokenizer, corp.documents(split), block, max_tokens=max_tokens)
    tensors = blocks.as_dict(("input_ids", "attention_mask", "labels", "doc_start"))
    from ..adapters import sequence_context

    spiking = perplexity(model, tensors, batch_size=4,
                         batch_context=lambda b: sequence_context(model, doc_start=b.get("doc_start")))
    ann = perplexity(load_model(info["model"], dtype=torch.float32), tensors, batch_size=4)
    out = Path(args.out) if args.out else directory / f"report-{_slug(name)}-{block}-{max_tokens}"
    out.mkdir(parents=True, exist_ok=True)
    report = {"run_dir": str(directory), "data": name, "split": split, "content_hash": corp.content_hash(split),
              "block_size": block, "tokens": spiking["tokens"], "ppl_ann": ann["ppl"],
              "ppl_spiking_trained": spiking["ppl"]}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"perplexity on {name} ({split} split), block size {block}, {spiking['tokens']} tokens:\n"
              f"  ANN (not converted)        {_num(ann['ppl'])}\n"
              f"  spiking, after training    {_num(spiking['ppl'])}\n"
              f"files: {out / 'report.json'}")
    return 0


def _conversion_report(args: argparse.Namespace, directory: Path) -> int:
    from hybridtune.conversion import spiking_report

    request = {"model": args.model, "data": args.data or "python-docs", "split": "eval",
               "block_size": args.block_size or 512, "max_tokens": args.max_tokens or 2048}
    target = Path(args.out) if args.out else directory / "report"
    cached = target / "report.json"
    if cached.is_file():
        try:
            previous = json.loads(cached.read_text())
        except ValueError:
            previous = {}
        if previous.get(REQUEST_KEY) != request:
            cached.unlink()  # computed for other data or sizes (or by an older version): never reprint it
    report = spiking_report(directory, model=request["model"], data=request["data"], split=request["split"],
                            max_tokens=request["max_tokens"], block_size=request["block_size"], out=str(target))
    if report.get(REQUEST_KEY) != request:  # freshly computed: record what for, beside the results
        report[REQUEST_KEY] = request
        tmp = cached.with_name(cached.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=str))
        tmp.replace(cached)
    print(json.dumps(report, indent=2, default=str) if args.json else
          format_conversion_report(report, f"{cached} (PNGs beside it)"))
    return 0


def run(args: argparse.Namespace) -> int:
    from hybridtune.conversion.state import JSON_NAME

    from ..runs import BASE_FILE

    directory = Path(args.directory)
    if not directory.is_dir():
        return _fail(f"{directory} is not a directory; give a run directory (hybridtune train --out) or a converted "
                     "model (hybridtune convert --out)")
    try:
        if (directory / BASE_FILE).is_file() or (directory / "config.yaml").is_file():
            return _run_report(args, directory)
        if (directory / JSON_NAME).is_file():
            return _conversion_report(args, directory)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    return _fail(f"{directory} is neither a run directory (no {BASE_FILE} / config.yaml) nor a converted model (no "
                 f"{JSON_NAME})")
