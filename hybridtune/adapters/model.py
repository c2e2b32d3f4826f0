"""Build, save and load spiking peft models.

Spiking LoRA is a peft method of its own: importing this module registers the peft type
:data:`~hybridtune.adapters.config.SPIKING_LORA` with its config (:class:`SpikingLoraConfig`) and its tuner
(:class:`SpikingLoraModel`, peft's ``LoraModel`` that accepts only spiking configs and installs the sequence hook)
in peft's public mappings (``PEFT_TYPE_TO_CONFIG_MAPPING``, ``PEFT_TYPE_TO_TUNER_MAPPING``,
``PEFT_TYPE_TO_PREFIX_MAPPING``). ``peft.utils.register_peft_method`` cannot do it: it requires a member of the
``PeftType`` enum (a closed ``enum.Enum``) and a prefix no other method uses, while spiking LoRA shares LoRA's
``lora_`` parameter names. Saved adapters say ``"peft_type": "HYBRIDTUNE_SPIKING_LORA"``, so peft itself rebuilds the
spiking config from them, and a peft without hybridtune fails with a ``KeyError`` naming that type instead of
silently building ordinary LoRA and dropping the neuron parameters.

:func:`get_spiking_peft_model` builds (never re-classes) a ``SpikingPeftModelForCausalLM`` (or
``SpikingPeftModel``), a subclass of peft's model class that

* writes ``hybridtune_config.json`` (format, hybridtune / peft / torch versions, per-adapter neuron strategy, the base
  model's fingerprint, whether the base was spiking and the fingerprint of the conversion it was trained on: its
  config and calibration state) beside every adapter in ``save_pretrained``;
* routes ``load_adapter`` through the spiking config, refusing any load with unexpected or missing adapter keys
  (e.g. ``lora_neuron``) and naming the call to use.

The caller's config is never modified: the model holds a copy.

Example:
    >>> import tempfile
    >>> from hybridtune.testing import tiny_model, tiny_batch
    >>> from hybridtune.adapters import SpikingLoraConfig, get_spiking_peft_model, load
    >>> pm = get_spiking_peft_model(tiny_model("gpt2"), SpikingLoraConfig(r=4, target_modules=["c_attn"]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     pm.save_pretrained(d)
    ...     again = load(tiny_model("gpt2"), d)
    >>> type(again).__name__
    'SpikingPeftModelForCausalLM'
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import peft
import torch
from peft import MODEL_TYPE_TO_PEFT_MODEL_MAPPING, PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING, PeftModel
from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING
from peft.tuners.lora import LoraModel
from torch import nn

from hybridtune import ops
from hybridtune._version import __version__
from hybridtune.files import load_safetensors, read_json

from .config import SPIKING_LORA, SpikingLoraConfig
from .layer import SpikingLoraLinear
from .sequence import install_sequence_hook

MARKER_FILE = "hybridtune_config.json"
LOAD_REMEDY = "save the adapter again (a training run writes it at the end; --resume completes a killed one)"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "hybridtune-spiking-lora"
FORMAT_VERSION = 1


class SpikingAdapterLoadError(ValueError):
    """A load that would lose or misplace spiking-adapter parameters; the message says what to call instead."""


class SpikingLoraModel(LoraModel):
    """peft's LoRA tuner for :class:`SpikingLoraConfig` adapters (the layers come from the config's custom-module
    mapping); every injection (re)installs the sequence hook on the wrapped transformers model."""

    prefix: str = "lora_"

    def _check_new_adapter_config(self, config) -> None:
        if not isinstance(config, SpikingLoraConfig):
            raise TypeError(f"a spiking peft model takes SpikingLoraConfig adapters, got {type(config).__name__}")
        super()._check_new_adapter_config(config)

    def inject_adapter(self, model: nn.Module, *args: Any, **kwargs: Any) -> None:
        super().inject_adapter(model, *args, **kwargs)
        install_sequence_hook(model)


def _register_peft_method() -> None:
    """Make ``SPIKING_LORA`` a peft method through peft's public mappings (see the module docstring for why not
    ``register_peft_method``); idempotent."""
    PEFT_TYPE_TO_CONFIG_MAPPING[SPIKING_LORA] = SpikingLoraConfig
    PEFT_TYPE_TO_TUNER_MAPPING[SPIKING_LORA] = SpikingLoraModel
    PEFT_TYPE_TO_PREFIX_MAPPING[SPIKING_LORA] = SpikingLoraModel.prefix


_register_peft_method()


class SpikingPeftMixin:
    """Behaviour added to peft's model class by :func:`get_spiking_peft_model` (see the module docstring)."""

    def add_adapter(self, adapter_name: str, peft_config, *args: Any, **kwargs: Any) -> None:
        if not isinstance(peft_config, SpikingLoraConfig):
            raise TypeError(
                f"add_adapter({adapter_name!r}): a spiking peft model takes SpikingLoraConfig adapters, got "
                f"{type(peft_config).__name__}"
            )
        super().add_adapter(adapter_name, copy.deepcopy(peft_config), *args, **kwargs)

    def load_adapter(self, model_id, adapter_name: str, is_trainable: bool = False, **kwargs: Any):
        path = Path(model_id) / kwargs["subfolder"] if kwargs.get("subfolder") else Path(model_id)
        if adapter_name not in self.peft_config:
            read_marker(path)
            cfg = SpikingLoraConfig.from_adapter_dir(path)
            cfg.inference_mode = not is_trainable
            self.add_adapter(adapter_name, cfg)
            if is_trainable:
                self.set_requires_grad(adapter_name)
        result = super().load_adapter(str(model_id), adapter_name, is_trainable=is_trainable, **kwargs)
        check_load_result(result, adapter_name, path)
        return result

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, *args, **kwargs)
        selected = kwargs.get("selected_adapters") or list(self.peft_config)
        # every rank computes the markers (a sharded base's fingerprint gathers weights from all ranks), one writes
        write_markers(self, Path(save_directory), list(selected), write=kwargs.get("is_main_process", True))


_CLASSES: dict[type, type] = {}


def spiking_model_class(task_type: str | None) -> type[PeftModel]:
    """The spiking subclass of the peft model class peft uses for ``task_type`` (``PeftModel`` for None or an
    unknown task), made once per class."""
    cls = MODEL_TYPE_TO_PEFT_MODEL_MAPPING.get(task_type, PeftModel)
    if cls not in _CLASSES:
        _CLASSES[cls] = type("Spiking" + cls.__name__, (SpikingPeftMixin, cls), {"__module__": __name__})
    return _CLASSES[cls]


def is_spiking_peft_model(model: nn.Module) -> bool:
    return isinstance(model, SpikingPeftMixin)


def model_call_keys(model: nn.Module) -> tuple[str, ...]:
    """The batch fields a training or evaluation forward passes to ``model``: a spiking peft model also takes
    ``doc_start`` (popped by its sequence hook)."""
    keys = ("input_ids", "attention_mask")
    return keys + ("doc_start",) if is_spiking_peft_model(model) else keys


def get_spiking_peft_model(model: nn.Module, config: SpikingLoraConfig, adapter_name: str = "default",
                           **kwargs: Any) -> PeftModel:
    """Like ``peft.get_peft_model``: spiking LoRA layers, the sequence hook and the spiking save/load behaviour.

    The model holds a copy of ``config`` (``config`` itself is left as it was). Its ``task_type`` defaults to
    ``CAUSAL_LM`` for generative transformers models (so ``generate`` and ``labels`` work as for any peft causal LM);
    other modules get peft's generic ``PeftModel``. ``kwargs`` go to the peft model class
    (``autocast_adapter_dtype``, ``low_cpu_mem_usage``).

    Example:
        >>> from hybridtune.testing import tiny_model
        >>> pm = get_spiking_peft_model(tiny_model("llama"), SpikingLoraConfig(r=2, target_modules=["v_proj"]))
        >>> sorted({n.split(".")[-2] for n, p in pm.named_parameters() if p.requires_grad})
        ['default']
    """
    if not isinstance(config, SpikingLoraConfig):
        raise TypeError(f"get_spiking_peft_model needs a SpikingLoraConfig, got {type(config).__name__}")
    if isinstance(model, PeftModel):
        raise TypeError("model is already a peft model; add adapters with model.add_adapter(name, SpikingLoraConfig)")
    config = copy.deepcopy(config)
    if config.task_type is None and hasattr(model, "prepare_inputs_for_generation"):
        config.task_type = "CAUSAL_LM"
    # what peft.get_peft_model records before it builds the model class
    config.base_model_name_or_path = model.__dict__.get("name_or_path", None) or None
    peft_model = spiking_model_class(config.task_type)(model, config, adapter_name=adapter_name, **kwargs)
    ops.activate()  # the spike_lora backend is chosen once, when a model is built, never inside a forward
    return peft_model


def spiking_base(model: nn.Module) -> bool:
    """True when some adapter sits on a spiking base layer (one with an input encoder)."""
    return any(hasattr(m.get_base_layer(), "encode") for m in model.modules() if isinstance(m, SpikingLoraLinear))


def base_fingerprint(model: nn.Module) -> str:
    from hybridtune.models import model_fingerprint

    return model_fingerprint(model)


def conversion_fingerprint(model: nn.Module) -> str | None:
    """16 hex digits over a converted model's conversion config and calibration state (values rounded to 1e-6, so
    the same conversion saved and loaded again matches); None for a model that is not converted."""
    from hybridtune.conversion import conversion_info, is_converted

    if not is_converted(model):
        return None
    info = conversion_info(model)
    digest = hashlib.sha256(json.dumps(info.config.to_dict(), sort_keys=True, default=str).encode())
    for site in sorted(info.state):
        for kind in sorted(info.state[site]):
            t = info.state[site][kind].detach()
            digest.update(f"{site}/{kind}{tuple(t.shape)}".encode())
            digest.update(t.to(torch.float64).cpu().numpy().round(6).tobytes())
    return digest.hexdigest()[:16]


def write_markers(model: PeftModel, root: Path, adapters: list[str], write: bool = True) -> None:
    """Write ``hybridtune_config.json`` into ``root`` and every adapter directory
    (``write=False``: compute only, on the ranks that do not write)."""
    common = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "hybridtune_version": __version__,
        "peft_version": peft.__version__,
        "torch_version": torch.__version__,
        "base_fingerprint": base_fingerprint(model),
        "spiking_base": spiking_base(model),
        "conversion_fingerprint": conversion_fingerprint(model),
    }
    if not write:
        return
    listing = {}
    for name in adapters:
        sub = "" if name == "default" else name
        directory = root / sub if sub else root
        cfg = model.peft_config[name]
        listing[name] = {"subfolder": sub, "neuron": cfg.neuron.to_dict(), "r": cfg.r, "lora_alpha": cfg.lora_alpha,
                         "init_b_std": cfg.init_b_std}
        if sub:  # the adapter's own directory describes just that adapter, so it can be loaded on its own
            marker = {**common, "adapters": {name: {**listing[name], "subfolder": ""}}}
            (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    # the root lists every saved adapter (load(model, root) restores them all)
    (root / MARKER_FILE).write_text(json.dumps({**common, "adapters": listing}, indent=2) + "\n")


def read_marker(path: str | Path) -> dict:
    """The ``hybridtune_config.json`` of a saved spiking adapter directory (a clear error if it is not one)."""
    path = Path(path)
    file = path / MARKER_FILE
    if not file.is_file():
        if (path / "adapter_config.json").is_file():
            raise SpikingAdapterLoadError(
                f"{path} has no {MARKER_FILE}: it is not a hybridtune spiking adapter (plain peft LoRA? load it with "
                "peft.PeftModel.from_pretrained)"
            )
        raise FileNotFoundError(f"{path} is not a saved adapter directory (no {MARKER_FILE}, no adapter_config.json)")
    data = read_json(file, LOAD_REMEDY)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise SpikingAdapterLoadError(f"{file}: format {found!r} is not {FORMAT!r}")
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise SpikingAdapterLoadError(
            f"{file} was written by a newer hybridtune ({data.get('hybridtune_version')}); upgrade hybridtune"
        )
    return data


def check_load_result(result, adapter_name: str, path: Path) -> None:
    """Refuse a load that dropped or missed adapter parameters (peft only warns, or says nothing)."""
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k and adapter_name in k]
    if unexpected or missing:
        neuron = [k for k in unexpected if "lora_neuron" in k]
        hint = (" The checkpoint has spiking-neuron parameters the model has no place for: the model holds plain LoRA "
                "layers. Build it with hybridtune.adapters.load(base_model, path).") if neuron else ""
        raise SpikingAdapterLoadError(
            f"loading adapter {adapter_name!r} from {path} would not restore it exactly: unexpected keys "
            f"{unexpected[:6]}{'...' if len(unexpected) > 6 else ''}, missing keys "
            f"{missing[:6]}{'...' if len(missing) > 6 else ''}.{hint}"
        )


def _check_conversion(model: nn.Module, marker: dict, path: Path, allow_other_conversion: bool) -> None:
    saved = marker.get("conversion_fingerprint")
    if saved is None or allow_other_conversion:  # adapters saved before the record, or on a plain base
        return
    found = conversion_fingerprint(model)
    if found != saved:
        now = "an unconverted model" if found is None else f"a conversion with fingerprint {found}"
        raise SpikingAdapterLoadError(
            f"the adapter in {path} was trained on the conversion with fingerprint {saved}, but the model given is "
            f"{now} (another divisor, coverage or calibration): its perplexity would be silently worse. Load the "
            f"conversion it was trained on, or pass allow_other_conversion=True (CLI: --allow-other-conversion) to "
            f"load it anyway"
        )


def _check_base(model: nn.Module, marker: dict, path: Path, check_fingerprint: bool) -> None:
    if marker.get("spiking_base") and not any(hasattr(m, "encode") and isinstance(m, nn.Linear)
                                              for m in model.modules()):
        raise SpikingAdapterLoadError(
            f"the adapter in {path} was trained on a spiking (converted) base, but the model given has no spiking "
            "layers; load the converted base first (hybridtune.conversion.load_spiking(base, spiking_dir))"
        )
    if check_fingerprint:
        found = base_fingerprint(model)
        if found != marker.get("base_fingerprint"):
            raise SpikingAdapterLoadError(
                f"base model fingerprint {found} differs from the one the adapter in {path} was saved on "
                f"({marker.get('base_fingerprint')}); pass check_fingerprint=False to load anyway"
            )


def load(model: nn.Module, path: str | Path, adapter_name: str | None = None, is_trainable: bool = False,
         check_fingerprint: bool = True, allow_other_conversion: bool = False) -> PeftModel:
    """Restore spiking adapters saved with ``save_pretrained`` onto ``model`` (a base model, or a spiking peft model
    to add them to). ``adapter_name=None`` loads every adapter listed in the directory's marker (``default`` first,
    which stays active); a name loads only that one. The first loaded adapter is active.

    Refused (:class:`SpikingAdapterLoadError`) when the base weights differ (``check_fingerprint=False`` skips
    that) or when the model's conversion differs from the one the adapter was trained on
    (``allow_other_conversion=True`` skips that).

    Example:
        >>> import tempfile
        >>> from hybridtune.testing import tiny_model, tiny_batch
        >>> pm = get_spiking_peft_model(tiny_model("llama"), SpikingLoraConfig(r=2, target_modules=["q_proj"]))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     pm.save_pretrained(d)
        ...     pm2 = load(tiny_model("llama"), d)
        >>> sorted(pm2.peft_config)
        ['default']
    """
    path = Path(path)
    marker = read_marker(path)
    listing: dict = marker.get("adapters", {})
    if adapter_name is None:
        names = sorted(listing, key=lambda n: (n != "default", n))
    elif adapter_name in listing:
        names = [adapter_name]
    elif len(listing) == 1 and (path / "adapter_config.json").is_file():
        names = [adapter_name]  # a single-adapter directory loaded under a new name
    else:
        raise SpikingAdapterLoadError(f"{path} has no adapter {adapter_name!r}; it holds {sorted(listing)}")
    if not names:
        raise SpikingAdapterLoadError(f"{path}/{MARKER_FILE} lists no adapters")
    if isinstance(model, PeftModel):
        if not is_spiking_peft_model(model):
            raise SpikingAdapterLoadError("model is a plain peft model; pass the base model (or a spiking peft model)")
        peft_model = model
        base = model.base_model.model
    else:
        peft_model = None
        base = model
    _check_base(base, marker, path, check_fingerprint)
    _check_conversion(base, marker, path, allow_other_conversion)
    for name in names:
        entry = listing.get(name, {"subfolder": ""})
        directory = path / entry["subfolder"] if entry.get("subfolder") else path
        if (directory / WEIGHTS_FILE).is_file():  # a torn file fails here, naming it, not deep inside peft
            load_safetensors(directory / WEIGHTS_FILE, LOAD_REMEDY)
        if peft_model is None:
            cfg = SpikingLoraConfig.from_adapter_dir(directory)
            cfg.inference_mode = not is_trainable
            peft_model = get_spiking_peft_model(base, cfg, adapter_name=name)
        peft_model.load_adapter(str(directory), name, is_trainable=is_trainable)
    if not is_trainable:
        peft_model.eval()
    return peft_model
