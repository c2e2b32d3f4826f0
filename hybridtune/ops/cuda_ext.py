"""The fused spike-LoRA CUDA extension: build on first use, register on ``hybridtune::spike_lora``, compile-check.

Sources live in ``hybridtune/ops/csrc`` (kernels in ``*.cu``, ATen/cuBLAS glue in ``spike_lora.cpp``). They are
compiled the first time :func:`load_extension` runs (``torch.utils.cpp_extension.load`` with ninja) into a cache
outside the source tree, ``~/.cache/hybridtune/torch_extensions/<torch>-<cuda>-<python>-<source hash>``
(``$HYBRIDTUNE_EXTENSION_DIR`` overrides it), or ahead of time with ``python -m hybridtune.ops.cuda_ext build``.

The private ops ``hybridtune_C::spike_lora_fwd`` / ``spike_lora_bwd`` are *defined* here, with fake kernels, so they
exist (and trace under ``torch.compile``) everywhere; the compiled library only adds their CUDA kernels.
:func:`register_cuda_impl` makes ``spike_lora_fwd`` the ``"cuda"`` kernel of the public op;
:func:`spike_lora_backward_cuda` is the fused backward with the signature and return convention of
:func:`hybridtune.ops.reference.spike_lora_backward`.

:func:`compile_check` compiles every source with plain ``nvcc -c`` against the installed torch headers -- also on
a CPU-only torch -- and returns the ``ptxas -v`` register / spill report per kernel
(``python -m hybridtune.ops.cuda_ext check``).

Example:
    >>> from hybridtune.ops import cuda_ext
    >>> sorted(cuda_ext.SOURCES)
    ['expand.cu', 'neuron.cu', 'shrink.cu', 'spike_lora.cpp']
    >>> cuda_ext.build_directory().is_relative_to(cuda_ext.CSRC)
    False
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

CSRC = Path(__file__).resolve().with_name("csrc")
SOURCES = ("spike_lora.cpp", "shrink.cu", "neuron.cu", "expand.cu")
HEADERS = ("spike_lora_kernels.h", "common.cuh")
KERNEL_SURROGATES = ("atan", "fast_sigmoid", "sigmoid", "straight_through")
ENV_BUILD_DIR = "HYBRIDTUNE_EXTENSION_DIR"
# used when no GPU is visible to pick an architecture from (ahead-of-time builds); sm_80+ runs the tensor-core path
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"
# nvcc flags of the compile check: docs/architecture.md (CUDA build flags) plus the half/bfloat16 guards torch's own build passes
CHECK_FLAGS = ("-std=c++20", "-O3", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v", "-Xcompiler", "-fPIC",
               "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
               "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__")

_FWD_SCHEMA = (
    "spike_lora_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, float scaling, str neuron, "
    "Tensor threshold, Tensor decay, Tensor? reset, Tensor? state, int max_spikes, str surrogate, float slope) "
    "-> (Tensor, Tensor, Tensor)"
)
_BWD_SCHEMA = (
    "spike_lora_bwd(Tensor? grad_out, Tensor? grad_spikes, Tensor? grad_state, Tensor x, Tensor weight, "
    "Tensor lora_A, Tensor lora_B, Tensor spikes, float scaling, str neuron, Tensor threshold, Tensor decay, "
    "Tensor? reset, Tensor? state, int max_spikes, str surrogate, float slope, int[] needs) -> Tensor[]"
)

# the CUDA implementations come from the compiled library (TORCH_LIBRARY_IMPL in csrc/spike_lora.cpp)
_LIB = torch.library.Library("hybridtune_C", "DEF")
_LIB.define(_FWD_SCHEMA)
_LIB.define(_BWD_SCHEMA)


@torch.library.register_fake("hybridtune_C::spike_lora_fwd", lib=_LIB)
def _fwd_fake(x, weight, bias, lora_A, lora_B, scaling, neuron, threshold, decay, reset, state, max_spikes,
              surrogate, slope):
    bsz, steps, _ = x.shape
    rank = lora_A.shape[0]
    return x.new_empty(bsz, steps, weight.shape[0]), x.new_empty(bsz, steps, rank), x.new_empty(bsz, rank)


@torch.library.register_fake("hybridtune_C::spike_lora_bwd", lib=_LIB)
def _bwd_fake(grad_out, grad_spikes, grad_state, x, weight, lora_A, lora_B, spikes, scaling, neuron, threshold,
              decay, reset, state, max_spikes, surrogate, slope, needs):
    wanted = [(x.shape, x.dtype), (weight.shape, x.dtype), ((weight.shape[0],), x.dtype), (lora_A.shape, x.dtype),
              (lora_B.shape, x.dtype), (threshold.shape, threshold.dtype), (decay.shape, decay.dtype),
              # the lif state gradient comes in x's dtype (as in the reference), the memoryless zeros in the state's
              (state.shape, x.dtype if neuron == "lif" else state.dtype) if state is not None else ((0,), x.dtype)]
    return [x.new_empty(shape, dtype=dtype) if need else x.new_empty(0) for need, (shape, dtype) in zip(needs, wanted)]


class CudaExtensionUnavailable(RuntimeError):
    """The CUDA extension cannot be built or loaded here; the message says why and what to do."""


@dataclass
class _Loaded:
    name: str
    library: str
    build_dir: str

    @property
    def __file__(self) -> str:  # what backend_info() shows for a loaded extension module
        return self.library


_lock = threading.Lock()
_loaded: _Loaded | None = None
_failure: CudaExtensionUnavailable | None = None


def source_hash() -> str:
    """Short sha256 over the extension's sources and headers (names the build, so edits rebuild)."""
    digest = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        digest.update(name.encode())
        digest.update((CSRC / name).read_bytes())
    return digest.hexdigest()[:12]


def build_directory() -> Path:
    """Where the extension is built: ``$HYBRIDTUNE_EXTENSION_DIR`` or the per-user cache, keyed by torch version,
    CUDA version, Python version and source hash (an extension built for one torch does not load in another)."""
    override = os.environ.get(ENV_BUILD_DIR)
    if override:
        return Path(override).expanduser() / source_hash()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    tag = f"{torch.__version__}-cu{torch.version.cuda or 'none'}-py{sys.version_info[0]}{sys.version_info[1]}"
    return cache / "hybridtune" / "torch_extensions" / tag / source_hash()


def _check_buildable() -> None:
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise CudaExtensionUnavailable(
            f"torch {torch.__version__} is a CPU-only build, so the spike_lora CUDA extension cannot be built; install "
            "a CUDA build of torch (its CUDA major version must match nvcc's), or use the 'torch' backend")
    if cpp_extension.CUDA_HOME is None:
        raise CudaExtensionUnavailable(
            "no CUDA toolkit found for the spike_lora extension: set CUDA_HOME to the toolkit directory that holds "
            "bin/nvcc and lib64 (with libcudart), or use the 'torch' backend")
    if not cpp_extension.is_ninja_available():
        raise CudaExtensionUnavailable(
            "building the spike_lora CUDA extension needs ninja: pip install ninja (or hybridtune[cuda]), "
            "or use the 'torch' backend")


@contextlib.contextmanager
def _arch_list() -> Iterator[None]:
    # torch derives the target architectures from the visible GPUs; without one (ahead-of-time builds) it needs a list
    if os.environ.get("TORCH_CUDA_ARCH_LIST") or torch.cuda.is_available():
        yield
        return
    os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
    try:
        yield
    finally:
        os.environ.pop("TORCH_CUDA_ARCH_LIST", None)


def load_extension(verbose: bool = False) -> _Loaded:
    """Build (first use only) and load the extension; returns its name, library path and build directory.

    Raises :class:`CudaExtensionUnavailable` with the reason and the fix when it cannot; a failure is remembered for
    the rest of the process so that ``auto`` backend resolution does not rebuild on every call.
    """
    global _loaded, _failure
    with _lock:
        if _loaded is not None:
            return _loaded
        if _failure is not None:
            raise _failure
        try:
            _loaded = _build_and_load(verbose)
        except CudaExtensionUnavailable as exc:
            _failure = exc
            raise
        return _loaded


def _build_and_load(verbose: bool) -> _Loaded:
    from torch.utils import cpp_extension

    _check_buildable()
    build_dir = build_directory()
    build_dir.mkdir(parents=True, exist_ok=True)
    name = f"hybridtune_spike_lora_{source_hash()}"
    try:
        with _arch_list():
            library = cpp_extension.load(
                name=name,
                sources=[str(CSRC / src) for src in SOURCES],
                extra_cflags=["-O3"],
                extra_cuda_cflags=["-O3", "-lineinfo"],
                extra_include_paths=[str(CSRC)],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=verbose,
            )
    except Exception as exc:  # compiler / linker / loader errors: keep the tail, which names the real problem
        detail = str(exc).strip()
        raise CudaExtensionUnavailable(
            f"building or loading the spike_lora CUDA extension in {build_dir} failed: {type(exc).__name__}: "
            f"{detail[-3000:]}\nRerun with `python -m hybridtune.ops.cuda_ext build --verbose` for the full log, "
            "or use the 'torch' backend.") from exc
    return _Loaded(name=name, library=str(library), build_dir=str(build_dir))


def is_loaded() -> bool:
    return _loaded is not None


def extension_info() -> dict:
    """For ``hybridtune doctor``: whether the extension is loaded, where from, or why it failed."""
    return {
        "loaded": _loaded is not None,
        "library": _loaded.library if _loaded else None,
        "build_dir": str(build_directory()),
        "source_hash": source_hash(),
        "error": str(_failure) if _failure else None,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }


def _spike_lora_cuda_kernel(x: Tensor, weight: Tensor, bias: Tensor | None, lora_A: Tensor, lora_B: Tensor,
                            scaling: float, neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                            state: Tensor | None, max_spikes: int, surrogate: str,
                            slope: float) -> tuple[Tensor, Tensor, Tensor]:
    return torch.ops.hybridtune_C.spike_lora_fwd(x, weight, bias, lora_A, lora_B, float(scaling), neuron, threshold,
                                                 decay, reset, state, int(max_spikes), surrogate, float(slope))


def register_cuda_impl() -> None:
    """Load the extension and register its forward as the ``"cuda"`` kernel of ``hybridtune::spike_lora``.

    ``register_fake`` / ``register_autograd`` of the op are untouched; re-registering replaces the kernel (idempotent).
    Raises :class:`CudaExtensionUnavailable` when the extension cannot be loaded.
    """
    load_extension()
    from .spike_lora import spike_lora

    spike_lora.register_kernel("cuda")(_spike_lora_cuda_kernel)


def spike_lora_backward_cuda(grad_out: Tensor | None, grad_spikes: Tensor | None, grad_state: Tensor | None,
                             x: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, spikes: Tensor,
                             scaling: float, neuron: str, threshold: Tensor, decay: Tensor, reset: Tensor | None,
                             state: Tensor | None, max_spikes: int, surrogate: str, slope: float,
                             needs: Sequence[bool]) -> tuple:
    """Fused surrogate backward; same arguments and return value as ``reference.spike_lora_backward``:
    gradients for ``(x, weight, bias, lora_A, lora_B, threshold, decay, state)``, None where ``needs`` is False.

    Surrogates registered at runtime have no CUDA code: those raise ``ValueError`` (use the reference backward).
    """
    if surrogate not in KERNEL_SURROGATES:
        raise ValueError(f"spike_lora CUDA backward: surrogate={surrogate!r} has no CUDA implementation "
                         f"(built in: {', '.join(KERNEL_SURROGATES)}); use the reference backward ('torch' backend)")
    flags = [int(bool(n)) for n in needs]
    grads = torch.ops.hybridtune_C.spike_lora_bwd(grad_out, grad_spikes, grad_state, x, weight, lora_A, lora_B,
                                                  spikes, float(scaling), neuron, threshold, decay, reset, state,
                                                  int(max_spikes), surrogate, float(slope), flags)
    return tuple(g if need else None for g, need in zip(grads, flags))


# ---- compile check (no GPU, no CUDA build of torch needed) ----------------------------------------------------------


@dataclass
class KernelReport:
    """``ptxas -v`` figures for one kernel."""

    source: str
    kernel: str  # demangled when c++filt is available
    registers: int
    spill_stores: int
    spill_loads: int
    stack_bytes: int
    smem_bytes: int


_ENTRY = re.compile(r"Compiling entry function '(?P<name>[^']+)'")
_PROPS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<st>\d+) bytes spill stores, (?P<ld>\d+) bytes spill loads")
_USED = re.compile(r"Used (?P<regs>\d+) registers(?:.*?(?P<smem>\d+) bytes smem)?")


def parse_ptxas(source: str, text: str) -> list[KernelReport]:
    """Kernel reports from ``nvcc -Xptxas -v`` output (one per entry function)."""
    reports: list[KernelReport] = []
    name, props = None, None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            name, props = m["name"], None
        elif (m := _PROPS.search(line)) and name is not None:
            props = m
        elif (m := _USED.search(line)) and name is not None:
            reports.append(KernelReport(
                source=source, kernel=name, registers=int(m["regs"]),
                spill_stores=int(props["st"]) if props else 0, spill_loads=int(props["ld"]) if props else 0,
                stack_bytes=int(props["stack"]) if props else 0, smem_bytes=int(m["smem"] or 0)))
            name = None
    return _demangle(reports)


def _demangle(reports: list[KernelReport]) -> list[KernelReport]:
    tool = shutil.which("c++filt")
    if not reports or tool is None:
        return reports
    out = subprocess.run([tool], input="\n".join(r.kernel for r in reports), capture_output=True, text=True,
                         check=False)
    names = out.stdout.splitlines()
    if out.returncode == 0 and len(names) == len(reports):
        for report, pretty in zip(reports, names):
            report.kernel = pretty.replace("hybridtune::(anonymous namespace)::", "")
    return reports


def _torch_include_flags() -> list[str]:
    include = Path(torch.__file__).resolve().parent / "include"
    return ["-isystem", str(include), "-isystem", str(include / "torch" / "csrc" / "api" / "include"),
            "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


def _compile_one(nvcc: str, src: str, out_dir: Path) -> tuple[str, int, str]:
    cmd = [nvcc, "-c", str(CSRC / src), "-o", str(out_dir / f"{src}.o"), "-I", str(CSRC), *CHECK_FLAGS]
    if src.endswith(".cpp"):
        cmd += [*_torch_include_flags(), "-Xcompiler", "-Wall"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return src, proc.returncode, proc.stdout + proc.stderr


def compile_check(nvcc: str | None = None, out_dir: str | Path | None = None) -> list[KernelReport]:
    """Compile every source with plain ``nvcc -c`` (sm_90a, C++20; torch headers for the .cpp) and return the
    ptxas register / spill report of every kernel. Objects go to ``out_dir`` (a temporary directory by default).

    Raises ``FileNotFoundError`` without nvcc and ``RuntimeError`` with the compiler output on a failed compile.
    """
    nvcc = nvcc or shutil.which("nvcc")
    if nvcc is None:
        raise FileNotFoundError("nvcc not found on PATH; the compile check needs a CUDA toolkit (no GPU needed)")
    with contextlib.ExitStack() as stack:
        target = Path(out_dir) if out_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        target.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=max(1, min(len(SOURCES), os.cpu_count() or 1))) as pool:
            results = list(pool.map(lambda s: _compile_one(nvcc, s, target), SOURCES))
    failed = [(src, log) for src, code, log in results if code != 0]
    if failed:
        raise RuntimeError("nvcc compile check failed:\n" + "\n".join(f"--- {s}\n{log[-4000:]}" for s, log in failed))
    return [report for src, _, log in results for report in parse_ptxas(src, log)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hybridtune.ops.cuda_ext {build,info,check}``."""
    parser = argparse.ArgumentParser(prog="python -m hybridtune.ops.cuda_ext", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the extension ahead of time (needs a CUDA build of torch + nvcc)")
    build.add_argument("--verbose", action="store_true")
    sub.add_parser("info", help="print where the extension is built and whether it loads")
    check = sub.add_parser("check", help="compile-check the sources with nvcc -c and print the ptxas report")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            loaded = load_extension(verbose=args.verbose)
        except CudaExtensionUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"built and loaded {loaded.name}: {loaded.library}")
        return 0
    if args.command == "info":
        with contextlib.suppress(CudaExtensionUnavailable):
            load_extension()
        print(json.dumps(extension_info(), indent=2))
        return 0
    try:
        reports = compile_check()
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        for r in reports:
            print(f"{r.source:15} regs={r.registers:3d} spill_st={r.spill_stores} spill_ld={r.spill_loads} "
                  f"stack={r.stack_bytes} smem={r.smem_bytes:5d}  {r.kernel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
