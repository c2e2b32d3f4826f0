"""Two CPU processes (``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2``) through a per-task sequence: the task
adapter added after the first stage's ``accelerator.prepare`` is trained identically on both ranks, because each
stage re-prepares the model with fresh optimizers. The negative control keeps the first stage's DDP wrapper (what
a loop that only adds the adapter would do): the new adapter's gradients are then never averaged and the ranks
silently drift apart. (``accelerate launch --cpu --num_processes 2`` would start one process.) Run as a script,
this file is the worker."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch


def _run_workers(torchrun, tmp_path: Path, helpers_dir: Path, *extra: str) -> None:
    proc = torchrun([__file__, tmp_path, *extra], timeout=300,
                    env={"PYTHONPATH": os.pathsep.join([str(helpers_dir), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_processes_add_a_task_adapter_and_stay_identical(tmp_path, helpers_dir, torchrun):
    from safetensors.torch import load_file

    _run_workers(torchrun, tmp_path, helpers_dir)
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["world"] for i in info] == [2, 2]
    assert info[0]["matrix"] == info[1]["matrix"] and len(info[0]["matrix"]) == 2
    # the ranks read different blocks, so without synchronised gradients they would drift apart
    assert info[0]["first_batches"] != info[1]["first_batches"]
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert a.keys() == b.keys() and any(".task1." in n for n in a)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert any(".task1." in n and "lora_B" in n and a[n].abs().sum() > 0 for n in a)  # task1 was trained
    assert info[0]["matrix"][1][0] == info[0]["matrix"][0][0]  # task0 untouched by stage 1


@pytest.mark.slow
def test_negative_control_a_stale_ddp_wrapper_lets_the_ranks_drift(tmp_path, helpers_dir, torchrun):
    from safetensors.torch import load_file

    _run_workers(torchrun, tmp_path, helpers_dir, "--stale-ddp")
    a, b = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    drifted = [n for n in a if not torch.equal(a[n], b[n])]
    assert drifted and all(".task1." in n for n in drifted)


def _keep_first_ddp_wrapper() -> None:
    """Make ``Accelerator.prepare`` hand back the first wrapper it built for a module (the bug being guarded)."""
    from accelerate import Accelerator

    original, wrapped = Accelerator.prepare, {}

    def prepare(self, *objects, **kwargs):
        if len(objects) == 1 and isinstance(objects[0], torch.nn.Module):
            if id(objects[0]) not in wrapped:
                wrapped[id(objects[0])] = original(self, objects[0], **kwargs)
            return wrapped[id(objects[0])]
        return original(self, *objects, **kwargs)

    Accelerator.prepare = prepare


def _worker(out: Path, stale_ddp: bool = False) -> None:
    import trainer_helpers as th
    from safetensors.torch import save_file

    from hybridtune.continual.config import ContinualSection
    from hybridtune.continual.data import Domain
    from hybridtune.continual.state import adapter_parameters
    from hybridtune.continual.trainer import ContinualTrainer
    from hybridtune.trainers import TrainerCallback

    torch.set_num_threads(1)
    if stale_ddp:
        _keep_first_ddp_wrapper()

    def blocks(stride, n, seed):
        start = torch.randint(0, 40, (n, 1), generator=torch.Generator().manual_seed(seed))
        return {"input_ids": (start + stride * torch.arange(16)) % 40 + 3}

    class FirstBatch(TrainerCallback):
        def __init__(self):
            self.ids = []

        def on_train_begin(self, trainer):
            self.ids.append(trainer.micro_batch(0)["input_ids"].tolist())

    doms = [Domain.from_blocks(f"s{s}", blocks(s, 16, s), blocks(s, 4, 50 + s)) for s in (1, 3)]
    cfg = th.run_config(out, "run", steps=3, batch_size=2, save_every=3, eval_every=3)
    probe = FirstBatch()
    trainer = ContinualTrainer(th.lora_model(spiking=True, threshold=0.02), cfg, doms, callbacks=[probe],
                               section=ContinualSection(domains=["s1", "s3"], adapter="per_task", stage_eval=False))
    report = trainer.fit()
    rank = trainer.accelerator.process_index
    params = {k: v.detach().cpu().contiguous() for k, v in adapter_parameters(trainer.model).items()}
    save_file(params, str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"world": trainer.accelerator.num_processes,
                                                      "matrix": report["matrix"], "first_batches": probe.ids}))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), stale_ddp="--stale-ddp" in sys.argv[2:])
