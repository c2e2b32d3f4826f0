"""FSDP on two devices: ``trainer.sharding: fsdp`` on 2 processes matches one unsharded process with the same global
batch after 3 steps, for ``surrogate`` (gradients averaged over ranks) and ``stdp`` (a local rule, base weights
gathered), and keeps the ranks identical. The same check as ``tests/trainers/test_fsdp.py``, on GPUs (NCCL).

Usage (``benchmarks/gpu_check.sh`` runs it when ``nvidia-smi -L`` lists two GPUs or more)::

    python benchmarks/fsdp_check.py --out fsdp_2gpu.json              # 2 GPUs
    python benchmarks/fsdp_check.py --out fsdp_2cpu.json --device cpu  # the same on 2 CPU processes (gloo)

Writes a JSON record: device, torch version, per learner the largest |sharded - one process| over the adapter
weights, whether the ranks are bit-identical, the share of the base each rank stores, and ``passed``. Exit status 0
when every learner passes, 1 otherwise, 3 when fewer than two GPUs are visible (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STEPS, PER_RANK, WORLD = 3, 2, 2
TOLERANCE = {"cpu": 2e-5, "cuda": 1e-4}  # cuBLAS may pick other kernels for a batch of 2 than for 4


def blocks(n: int = 32, length: int = 24, seed: int = 0) -> dict[str, torch.Tensor]:
    """Counting sequences (learnable in a few steps by a tiny LoRA), one document per block."""
    gen = torch.Generator().manual_seed(seed)
    ids = (torch.randint(0, 40, (n, 1), generator=gen) + torch.arange(length)) % 40 + 3
    doc_start = torch.zeros_like(ids, dtype=torch.bool)
    doc_start[:, 0] = True
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(), "doc_start": doc_start}


def train(learner: str, out: Path, batch_size: int, sharding: str) -> tuple[dict[str, torch.Tensor], float | None]:
    """3 steps of ``learner`` on a tiny spiking-LoRA llama; returns the owned weights and the base share stored."""
    from hybridtune.adapters import get_spiking_peft_model, spiking_lora_config
    from hybridtune.config import RunConfig, load_config
    from hybridtune.sharding import sharded_fraction
    from hybridtune.testing import tiny_model
    from hybridtune.trainers import Trainer
    from hybridtune.trainers.loop import build_learners

    cfg = RunConfig()
    t = cfg.trainer
    t.output_dir, t.steps, t.batch_size, t.eval_every, t.save_every = str(out / learner), STEPS, batch_size, 3, 3
    t.scheduler, t.sharding, t.overwrite, cfg.tracking.backend = "constant", sharding, True, "none"
    cfg.ops.backend = "torch"  # the check is about sharding, not the fused kernel
    repo = Path(__file__).resolve().parents[1]
    cfg.learners = (load_config(repo / "configs" / "learners" / "stdp.yaml").learners if learner == "stdp"
                    else cfg.learners)
    cfg.learners[0].lr = 1e-2 if learner == "surrogate" else cfg.learners[0].lr
    torch.manual_seed(0)
    model = get_spiking_peft_model(tiny_model("llama"), spiking_lora_config(
        r=4, threshold=0.02, init_b_std=0.01, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"]))
    trainer = Trainer(model, cfg, learners=build_learners(cfg), train_data=blocks(), eval_data=blocks(5, seed=2))
    share = sharded_fraction(trainer.unwrapped, trainer.owned.values()) if trainer.sharded else None
    trainer.fit()
    return {k: v.detach().cpu().contiguous() for k, v in trainer.owned.items()}, share


def worker(out: Path) -> None:
    """One rank of the 2-process sharded run (started by torchrun from :func:`main`)."""
    from safetensors.torch import save_file

    for learner in ("surrogate", "stdp"):
        weights, share = train(learner, out, PER_RANK, "fsdp")
        rank = int(os.environ["RANK"])
        save_file(weights, str(out / f"{learner}-rank{rank}.safetensors"))
        (out / f"{learner}-share{rank}.json").write_text(json.dumps(share))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # float32 means float32
    if args.worker:
        worker(Path(args.worker))
        return 0
    if args.device == "cuda" and torch.cuda.device_count() < WORLD:
        print(f"fsdp_check: {torch.cuda.device_count()} GPU(s) visible, 2 needed: skipped, nothing written")
        return 3
    from safetensors.torch import load_file

    record: dict = {"check": "fsdp 2 processes vs 1", "device": args.device, "torch": torch.__version__,
                    "steps": STEPS, "global_batch": PER_RANK * WORLD, "learners": {}}
    if args.device == "cuda":
        record["gpus"] = [torch.cuda.get_device_name(i) for i in range(WORLD)]
    env = {**os.environ, "TQDM_DISABLE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    if args.device == "cpu":
        env["ACCELERATE_USE_CPU"] = "1"
    else:
        env["CUDA_VISIBLE_DEVICES"] = env.get("CUDA_VISIBLE_DEVICES", "0,1")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                               "--master_port", str(_free_port()), __file__, "--out", args.out, "--device",
                               args.device, "--worker", str(out)], env=env, capture_output=True, text=True)
        record["sharded_run_s"] = round(time.perf_counter() - start, 1)
        if done.returncode != 0:
            record.update(passed=False, error=(done.stdout + done.stderr)[-4000:])
        else:
            if args.device == "cpu":
                os.environ["ACCELERATE_USE_CPU"] = "1"
            for learner in ("surrogate", "stdp"):
                ranks = [load_file(str(out / f"{learner}-rank{r}.safetensors")) for r in range(WORLD)]
                reference, _ = train(learner, out / "one", PER_RANK * WORLD, "none")
                diff = max((ranks[0][k] - v).abs().max().item() for k, v in reference.items())
                identical = all(torch.equal(ranks[0][k], ranks[1][k]) for k in reference)
                share = json.loads((out / f"{learner}-share0.json").read_text())
                record["learners"][learner] = {
                    "max_abs_diff_vs_one_process": diff, "tolerance": TOLERANCE[args.device],
                    "ranks_identical": identical, "base_share_per_rank": share,
                    "passed": identical and diff <= TOLERANCE[args.device] and abs(share - 1 / WORLD) < 0.02}
            record["passed"] = all(v["passed"] for v in record["learners"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0 if record["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
