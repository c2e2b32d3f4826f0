"""lm-evaluation-harness model type ``hybridtune``: score an ANN, a converted spiking model or spiking model + adapter.

``lm-eval`` (EleutherAI's lm-evaluation-harness, 0.4.x; optional extra ``hybridtune[eval]``) finds model classes in
its registry; it has no plugin entry point for models, so the class registers when this module is imported. Run
lm-eval's own command line through this module (the arguments are lm-eval's)::

    python -m hybridtune.integrations.lm_eval --model hybridtune \\
        --model_args spiking=DIR,adapter=DIR,accounting=acc.json --tasks TASKS [--include_path DIR] ...

or, in Python, ``import hybridtune.integrations.lm_eval`` before ``lm_eval.simple_evaluate(model="hybridtune",
...)``. ``model_args``: ``model`` (the base; default: the one ``spiking`` was converted from, else ``default``),
``spiking`` (a converted model directory; without it the ANN is scored), ``adapter`` (a spiking LoRA adapter),
``max_length`` (context window, default the model's), ``accounting`` (a JSON file: spikes, SOPs and energy of every
forward of the evaluation, rewritten after each request type and printed at the end).

Every request is one fresh forward (no KV cache), so stateful adapters start each request from a zero membrane, as
each training document does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError as exc:  # optional extra
    raise ImportError("the lm-evaluation-harness integration needs lm-eval: pip install 'hybridtune[eval]' "
                      "(or pip install lm-eval)") from exc

from hybridtune.accounting.census import Census, count_ops


def merge_census(total: Census, part: Census) -> None:
    """Add ``part``'s op counts, spike statistics and tokens into ``total`` (in place)."""
    for key, rec in part.ops.items():
        into = total.ops[key]
        for name in ("ann_mac", "ann_ac", "snn_mac", "snn_ac", "spike_driven_mac"):
            setattr(into, name, getattr(into, name) + getattr(rec, name))
    for name, stats in part.stats.items():
        if name in total.stats:
            total.stats[name] += stats
        else:
            total.stats[name] = stats
    total.tokens += part.tokens


def _progress(requests, what: str, disable: bool):
    from tqdm import tqdm

    return tqdm(requests, desc=f"hybridtune {what}", disable=disable)


def _truthy(value: Any) -> bool:
    return str(value).lower() in ("1", "true", "yes")


@register_model("hybridtune")
class HybridtuneLM(LM):
    """An lm-eval ``LM`` over a hybridtune model (see the module docstring for ``model_args``)."""

    def __init__(self, spiking: str | None = None, adapter: str | None = None, model: str | None = None,
                 max_length: int | None = None, accounting: str | None = None, device: str | None = None,
                 batch_size: Any = 1, **unused: Any) -> None:
        super().__init__()
        from hybridtune.generation import load_for_generation

        for key, value in (("spiking", spiking), ("adapter", adapter)):
            if value and not Path(value).is_dir():
                raise ValueError(f"model_args {key}={value}: no such directory")
        self.model, self.tokenizer, self.base_name = load_for_generation(spiking, adapter, model)
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line passes its default device; like its own hf model type, stay on the CPU
            print(f"hybridtune lm-eval: device={device} is not available here; running on the CPU", file=sys.stderr)
        elif device:
            self.model.to(device)
        self.model_device = next(self.model.parameters()).device
        window = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length) if max_length else int(window)
        self.prefix_id = (self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None
                          else self.tokenizer.eos_token_id)
        self.spiking, self.adapter = spiking, adapter
        self.accounting_path = Path(accounting) if accounting else None
        self.census = Census()
        self.counted = bool(spiking)  # an ANN has no spikes to count

    # -- helpers -----------------------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _count(self):
        """A census around model calls when the model spikes; merged into the running total on exit."""
        import contextlib

        if not self.counted:
            return contextlib.nullcontext()
        owner = self

        @contextlib.contextmanager
        def counting():
            with count_ops(owner.model) as census:
                yield census
            merge_census(owner.census, census)

        return counting()

    def _logprobs(self, ids: list[int]) -> torch.Tensor:
        """Log-probabilities ``[len(ids) - 1, vocab]`` of tokens 1.. given their prefix, one forward."""
        x = torch.tensor([ids], device=self.model_device)
        with torch.no_grad(), self._count() as census:
            logits = self.model(input_ids=x).logits[0, :-1].float()
            if census is not None:
                census.tokens += len(ids)
        return F.log_softmax(logits, dim=-1)

    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        ids = (context + continuation)[-(self.max_length + 1):]
        logprobs = self._logprobs(ids)[-len(continuation):]
        target = torch.tensor(continuation, device=logprobs.device)
        picked = logprobs.gather(1, target[:, None]).squeeze(1)
        return float(picked.sum()), bool((logprobs.argmax(-1) == target).all())

    def _flush(self, what: str) -> None:
        if not self.counted:
            return
        report = self.accounting()
        total = report["total"]
        energy = total["energy"]["fp32_45nm"]
        print(f"hybridtune lm-eval accounting after {what}: {report['tokens']} tokens, "
              f"{total['spikes_per_neuron']:.3f} spikes/neuron, {total['sops']:.4g} SOPs, energy ratio vs ANN "
              f"{energy['ratio']:.2f}x (45 nm FP32)", file=sys.stderr)
        if self.accounting_path is not None:
            self.accounting_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.accounting_path.with_name(self.accounting_path.name + ".tmp")
            tmp.write_text(json.dumps(report, indent=2, default=str))
            tmp.replace(self.accounting_path)

    def accounting(self) -> dict[str, Any]:
        """The accounting report of every forward so far (``hybridtune.accounting`` format)."""
        from hybridtune.accounting.report import build_report

        report = build_report(self.census)
        report["model"] = {"base": self.base_name, "spiking": self.spiking, "adapter": self.adapter}
        return report

    # -- lm-eval's request types -------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        out = []
        for req in _progress(requests, "loglikelihood", disable_tqdm):
            context, continuation = req.args
            whole = self._encode(context + continuation)
            ctx = self._encode(context)
            if whole[: len(ctx)] != ctx:  # the tokenizer merged across the boundary: split by encoding apart
                ctx, cont = ctx, self._encode(continuation)
            else:
                cont = whole[len(ctx):]
            if not cont:
                raise ValueError(f"loglikelihood request with an empty continuation (context {context[-40:]!r})")
            out.append(self._score(ctx if ctx else [self.prefix_id], cont))
        self._flush("loglikelihood")
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        out = []
        for req in _progress(requests, "loglikelihood_rolling", disable_tqdm):
            (text,) = req.args[:1]
            total = 0.0
            windows = get_rolling_token_windows(token_list=self._encode(text), prefix_token=self.prefix_id,
                                                max_seq_len=self.max_length, context_len=1)
            for context, target in map(make_disjoint_window, windows):
                total += self._score(list(context), list(target))[0]
            out.append(total)
        self._flush("loglikelihood_rolling")
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from hybridtune.generation import GenerationSettings, generate_text

        out = []
        for req in _progress(requests, "generate_until", disable_tqdm):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
            sample = _truthy(kwargs.pop("do_sample", False)) and temperature > 0
            settings = GenerationSettings(max_new_tokens=int(kwargs.pop("max_gen_toks", 256)), do_sample=sample,
                                          temperature=temperature if sample else 1.0)
            with self._count() as census:
                result = generate_text(self.model, self.tokenizer, context, settings, account=False)
                if census is not None:
                    census.tokens += result.prompt_tokens + max(0, len(result.token_ids) - 1)
            text = result.text
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop, 1)[0]
            out.append(text)
        self._flush("generate_until")
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``hybridtune`` model type registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
