"""Training throughput of the hybridtune trainer against the Hugging Face ``Trainer``, and the perplexity each reaches.

Three runs on the same base model, data (python-docs train split, packed), batch, schedule, optimizer and steps:

* ``hf_trainer``: plain peft LoRA on the ANN, trained by ``transformers.Trainer`` -- the yardstick;
* ``hybridtune``: spiking LoRA on the *converted* model, trained by ``hybridtune.Trainer`` (surrogate learner);
* ``hybridtune_lora``: plain peft LoRA on the ANN, trained by ``hybridtune.Trainer`` -- the same work as the
  yardstick, so ``trainer_overhead_ratio`` isolates the loop itself from the cost of the spiking model.

Throughput = tokens per optimizer step / the median step time, steps 1..``--warmup`` excluded (each loop times its
own steps: HF through a ``TrainerCallback``, hybridtune from its ``train/step_s`` / ``train/step_cpu_s`` log), from
wall time and, as ``*_cpu``, from the process's CPU time (on a shared machine wall time also measures the others). ``throughput_ratio`` is
hybridtune over the HF Trainer (target >= 0.8). After training, both models are evaluated by the same function
(``hybridtune.trainers.evaluate_perplexity``) on the same held-out blocks: ``ppl_hybridtune``, ``ppl_hf_trainer``
(same token budget), plus the starting perplexities.

Writes ``benchmarks/results/trainer.json``. Usage:
    python benchmarks/trainer.py [--steps 20] [--repeats 2] [--batch-size 4] [--block-size 128] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from hybridtune import __version__

TARGET = 0.8
TARGETS = ["q_proj", "v_proj", "up_proj", "down_proj"]


def load_base(tiny: bool):
    from hybridtune.models import load_model
    from hybridtune.testing import tiny_model

    model = tiny_model("llama") if tiny else load_model("default")
    # GGUF weights are dequantized to float32 on load, but transformers still flags the model as GGUF-quantized and
    # its Trainer then refuses to train it; the flag describes the file, not the weights in memory.
    model.hf_quantizer, model.is_quantized = None, False
    return model


def load_tok(tiny: bool):
    from hybridtune.models import load_tokenizer
    from hybridtune.testing import tiny_tokenizer

    return tiny_tokenizer() if tiny else load_tokenizer("default")


def data(tokenizer, args):
    from hybridtune.data import corpus, pack

    c = corpus("python-docs")
    need = args.steps * args.batch_size * args.block_size
    train = pack(tokenizer, c.documents("train"), args.block_size, max_tokens=need)
    held = pack(tokenizer, c.documents("eval"), args.block_size, max_tokens=args.eval_tokens)
    return train, held, {"corpus": c.name, "train_hash": c.content_hash("train"), "eval_hash": c.content_hash("eval")}


def peft_lora(model, args):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(args.seed)
    return get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS))


def run_hf(model, train, args, out: Path) -> list[tuple[float, float]]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    times: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times.append((time.perf_counter() - self.t, time.process_time() - self.c))

    targs = TrainingArguments(output_dir=str(out), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
                              learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup_lr,
                              weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", logging_steps=1,
                              save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
                              seed=args.seed, disable_tqdm=True, dataloader_drop_last=True)
    dataset = train.dataset(fields=("input_ids", "attention_mask", "labels"))
    Trainer(model=model, args=targs, train_dataset=dataset, callbacks=[Clock()]).train()
    return times


def run_hybridtune(model, train, args, out: Path) -> list[tuple[float, float]]:
    from hybridtune.config import RunConfig
    from hybridtune.tracking import read_metrics
    from hybridtune.trainers import Trainer

    cfg = RunConfig()
    t = cfg.trainer
    t.output_dir, t.steps, t.batch_size, t.seed = str(out), args.steps, args.batch_size, args.seed
    t.scheduler, t.warmup_steps, t.max_grad_norm, t.save_every, t.eval_every = "cosine", args.warmup_lr, 1.0, 10**6, 10**6
    cfg.learners[0].lr = args.lr
    cfg.tracking.backend = "none"
    Trainer(model, cfg, train_data=train).fit()
    return [(r["train/step_s"], r["train/step_cpu_s"]) for r in read_metrics(out / "metrics.jsonl")
            if "train/step_s" in r]


def ppl(model, held, batch_size: int) -> float:
    from hybridtune.adapters import model_call_keys
    from hybridtune.trainers.evaluation import evaluate_perplexity

    return evaluate_perplexity(model, held.as_dict(), batch_size, keys=model_call_keys(model))["ppl"]


def build(name: str, args, tokenizer):
    """The model a run trains: spiking LoRA on the converted model for ``hybridtune``, plain LoRA otherwise."""
    from hybridtune.config import RunConfig
    from hybridtune.trainers.cache import cached_conversion
    from hybridtune.trainers.domain import attach_adapter

    model = load_base(args.tiny)
    if name != "hybridtune":
        return peft_lora(model, args)
    cfg = RunConfig()
    cfg.adapter.r, cfg.adapter.alpha, cfg.adapter.target_modules = args.rank, 2.0 * args.rank, TARGETS
    snn, _ = cached_conversion(model, cfg.conversion, tokenizer)
    torch.manual_seed(args.seed)
    return attach_adapter(snn, cfg.adapter)


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="steps excluded from the timing")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup-lr", type=int, default=2, help="LR warmup steps (both trainers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="rounds of the three runs, interleaved")
    p.add_argument("--tiny", action="store_true", help="tiny random llama (smoke test), not the default model")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "trainer.json"))
    args = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("TQDM_DISABLE", "1")

    tokenizer = load_tok(args.tiny)
    train, held, data_info = data(tokenizer, args)
    tokens_per_step = args.batch_size * args.block_size
    runs: dict[str, list] = {name: [] for name in ("hf_trainer", "hybridtune", "hybridtune_lora")}
    ppls: dict[str, tuple[float, float]] = {}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for round_ in range(args.repeats):  # rounds interleave the three runs so load drifts hit them alike
            for name in runs:
                model = build(name, args, tokenizer)
                before = ppl(model, held, args.batch_size) if round_ == 0 else None
                runner = run_hf if name == "hf_trainer" else run_hybridtune
                times = runner(model, train, args, tmp / f"{name}-{round_}")
                reset_accelerate()
                runs[name] += times[args.warmup:] or times
                if round_ == 0:  # every round trains the same way: the first one's perplexity stands for all
                    ppls[name] = (before, ppl(model, held, args.batch_size))
                print(name, round_, [round(t[0], 2) for t in times], flush=True)
    results = {}
    for name, timed in runs.items():
        step_s = statistics.median(t[0] for t in timed)
        cpu_s = statistics.median(t[1] for t in timed)
        results[name] = {"tokens_per_second": tokens_per_step / step_s, "median_step_s": step_s,
                         "tokens_per_cpu_second": tokens_per_step / cpu_s, "median_step_cpu_s": cpu_s,
                         "steps_timed": len(timed), "ppl_before": ppls[name][0], "ppl_after": ppls[name][1]}
    hf, ht, htl = results["hf_trainer"], results["hybridtune"], results["hybridtune_lora"]
    out = {
        "throughput_ratio": ht["tokens_per_second"] / hf["tokens_per_second"],
        "trainer_overhead_ratio": htl["tokens_per_second"] / hf["tokens_per_second"],
        # the same ratios from per-step process CPU time: on a shared machine, wall time also measures the others
        "throughput_ratio_cpu": ht["tokens_per_cpu_second"] / hf["tokens_per_cpu_second"],
        "trainer_overhead_ratio_cpu": htl["tokens_per_cpu_second"] / hf["tokens_per_cpu_second"],
        "ppl_hybridtune": ht["ppl_after"], "ppl_hf_trainer": hf["ppl_after"],
        "target": TARGET, "meets_target": ht["tokens_per_second"] / hf["tokens_per_second"] >= TARGET,
        "runs": results,
        "setup": {"model": "tiny llama (random)" if args.tiny else "SmolLM2-135M-Instruct (default, Q4_1 GGUF)",
                  "adapter": f"r={args.rank}, alpha={2 * args.rank}, targets={TARGETS}", "steps": args.steps,
                  "batch_size": args.batch_size, "block_size": args.block_size, "tokens_per_step": tokens_per_step,
                  "tokens_trained": args.steps * tokens_per_step, "lr": args.lr, "schedule": "cosine",
                  "data": data_info, "eval_tokens": held.num_tokens, "seed": args.seed, "repeats": args.repeats,
                  "timing": f"median over steps {args.warmup + 1}..{args.steps} of every round"},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
                    "load_average_at_end": os.getloadavg()},
        "versions": {"hybridtune": __version__, "torch": torch.__version__},
        "command": " ".join(["python", "benchmarks/trainer.py", *sys.argv[1:]]),
        "seconds": round(time.time() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("throughput_ratio", "trainer_overhead_ratio", "throughput_ratio_cpu",
                                          "trainer_overhead_ratio_cpu", "ppl_hybridtune", "ppl_hf_trainer")},
                     indent=2))


if __name__ == "__main__":
    main()
