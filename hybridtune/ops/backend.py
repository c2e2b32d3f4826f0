"""Which implementation of ``hybridtune::spike_lora`` runs: ``auto | torch | cuda``, chosen explicitly and visibly.

The request comes from :func:`set_backend` (the run config), else the ``HYBRIDTUNE_OP_BACKEND`` environment variable,
else ``auto``. It is resolved once, when a spiking model is built (``get_spiking_peft_model``) or a trainer
starts (:func:`activate`), never inside a forward; until then the reference runs everywhere. Building the CUDA
extension compiles it on first use:

* ``torch``: the pure-PyTorch reference everywhere (a CUDA kernel registered earlier in the process is disabled).
* ``cuda``: load the extension and register its kernel for ``"cuda"``; any failure raises (never a silent
  downgrade). Without a visible GPU it raises too.
* ``auto``: ``cuda`` when a GPU is visible, the kernel has passed its parity check on that device class (a stamp,
  :mod:`hybridtune.ops.parity`) and the extension loads; else ``torch``. The reason is kept and shown by
  :func:`backend_info` (and ``hybridtune doctor``); a warning is logged when a verified GPU was visible but the
  extension failed. An unverified kernel runs only when asked for by name (``cuda``).

CPU tensors always run the reference (there is no CPU kernel).

Example:
    >>> from hybridtune.ops import backend_info, set_backend
    >>> info = set_backend("torch")
    >>> info["active"], info["requested"], info["source"]
    ('torch', 'torch', 'config')
    >>> _ = set_backend(None)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import dataclass, field

import torch

from . import parity
from .spike_lora import spike_lora, use_cuda_backward

BACKENDS = ("auto", "torch", "cuda")
ENV_VAR = "HYBRIDTUNE_OP_BACKEND"
log = logging.getLogger(__name__)


@dataclass
class _BackendState:
    configured: str | None = None  # set_backend(); wins over the environment
    active: str | None = None  # None until resolved
    reason: str = "not resolved yet (resolved on the first CUDA forward or by activate())"
    kernel_registered: bool = False
    extension: str | None = None
    disabled: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


_STATE = _BackendState()


def _validate(name: str, source: str) -> str:
    value = name.strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a spike_lora backend; choose one of {', '.join(BACKENDS)}")
    return value


def requested_backend() -> tuple[str, str]:
    """``(backend, source)`` with source ``config`` / ``env`` / ``default``."""
    if _STATE.configured is not None:
        return _STATE.configured, "config"
    env = os.environ.get(ENV_VAR)
    if env:
        return _validate(env, ENV_VAR), "env"
    return "auto", "default"


def set_backend(name: str | None) -> dict:
    """Request a backend (``auto | torch | cuda``; None = back to the environment / ``auto``) and resolve it now.

    Raises when ``cuda`` is requested and cannot be provided. Returns :func:`backend_info`.
    """
    _STATE.configured = None if name is None else _validate(name, "backend")
    _STATE.active = None
    activate()
    return backend_info()


def _register_cuda() -> None:
    # Imported here: the extension is optional and compiles on first use.
    from . import cuda_ext

    module = cuda_ext.load_extension()
    if not _STATE.kernel_registered:
        cuda_ext.register_cuda_impl()
        _STATE.kernel_registered = True
    _STATE.extension = getattr(module, "__file__", None) or getattr(module, "__name__", repr(module))
    _STATE.disabled.close()  # re-enable a kernel that an earlier "torch" choice switched off
    use_cuda_backward(cuda_ext.spike_lora_backward_cuda, cuda_ext.KERNEL_SURROGATES)


def _use_torch(reason: str) -> None:
    _STATE.active, _STATE.reason = "torch", reason
    _STATE.disabled.close()
    use_cuda_backward(None)
    if _STATE.kernel_registered:
        # keep the registered kernel switched off until another backend is chosen
        _STATE.disabled.enter_context(spike_lora.set_kernel_enabled("cuda", False))


def activate() -> str:
    """Resolve the requested backend (idempotent) and return the active one: ``torch`` or ``cuda``."""
    if _STATE.active is not None:
        return _STATE.active
    requested, source = requested_backend()
    where = f"{ENV_VAR}={requested}" if source == "env" else f"backend={requested!r} ({source})"
    if requested == "torch":
        _use_torch(f"{where}: pure-PyTorch reference")
    elif requested == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"{where} asks for the CUDA spike_lora kernel, but torch sees no CUDA device "
                f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); set the backend to 'auto' or 'torch'"
            )
        _register_cuda()
        _STATE.active, _STATE.reason = "cuda", f"{where}: CUDA kernel loaded"
    else:
        stamp = parity.find_stamp(parity.device_class()) if torch.cuda.is_available() else None
        if not torch.cuda.is_available():
            _use_torch(f"{where}: no CUDA device visible, pure-PyTorch reference")
        elif stamp is None:
            _use_torch(f"{where}: the CUDA kernel has not passed its parity check on {parity.device_class()} "
                       "(no stamp; benchmarks/gpu_check.sh writes one), pure-PyTorch reference; "
                       "backend 'cuda' runs it anyway")
        else:
            try:
                _register_cuda()
            except Exception as exc:  # auto may choose the reference, but says why (backend_info + warning)
                _use_torch(f"{where}: CUDA device visible but the extension is unavailable: {exc}")
                log.warning("spike_lora: using the PyTorch reference on CUDA: %s", _STATE.reason)
            else:
                _STATE.active, _STATE.reason = "cuda", f"{where}: CUDA device and extension available"
    return _STATE.active


def is_resolved() -> bool:
    return _STATE.active is not None


def active_backend() -> str | None:
    """``torch`` / ``cuda`` once resolved, else None (nothing resolved yet: the reference runs everywhere)."""
    return _STATE.active


def backend_info() -> dict:
    """What is in use and why: ``requested``, ``source``, ``active`` (None until resolved), ``reason``,
    ``cuda_available``, ``cuda_kernel_registered``, ``extension``, ``env_var`` (+ ``extension_detail`` once the
    CUDA extension module was imported)."""
    requested, source = requested_backend()
    info = {
        "requested": requested,
        "source": source,
        "active": _STATE.active,
        "reason": _STATE.reason,
        "cuda_available": torch.cuda.is_available(),
        "cuda_kernel_registered": _STATE.kernel_registered,
        "extension": _STATE.extension,
        "env_var": ENV_VAR,
    }
    cuda_ext = sys.modules.get(f"{__package__}.cuda_ext")
    if cuda_ext is not None and hasattr(cuda_ext, "extension_info"):  # build details once the extension was tried
        info["extension_detail"] = cuda_ext.extension_info()
    return info
