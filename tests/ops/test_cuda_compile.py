"""Compile check of the CUDA sources with plain ``nvcc -c`` (no GPU, CPU-only torch is fine; skipped without nvcc).

Every ``.cu`` is compiled for sm_90a with ``-Xptxas -v`` and the host ``.cpp`` against the installed torch headers
(docs/architecture.md, CUDA build flags). The ptxas report must list every kernel family for every dtype, with no register spills and
no stack frame, and the hot kernels must leave room for at least three 128-thread blocks per SM.
"""

from __future__ import annotations

import shutil

import pytest

from hybridtune.ops import cuda_ext

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")

FAMILIES = ("shrink_wmma_kernel", "shrink_fma_kernel", "memoryless_fwd_kernel", "lif_fwd_kernel",
            "memoryless_bwd_kernel", "lif_bwd_kernel", "expand_kernel")
DTYPES = ("float", "__nv_bfloat16", "__half")
# 65536 registers per SM / (3 blocks x 128 threads): keeps >= 3 resident blocks of the bandwidth-bound kernels
REGISTER_BUDGET = 170

PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z6kernelPf' for 'sm_90a'
ptxas info    : Function properties for _Z6kernelPf
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 1056 bytes smem
ptxas info    : Compile time = 3.1 ms
ptxas info    : Compiling entry function '_Z5otherv' for 'sm_90a'
ptxas info    : Function properties for _Z5otherv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
"""


def test_parse_ptxas_reads_registers_spills_and_smem():
    reports = cuda_ext.parse_ptxas("x.cu", PTXAS_SAMPLE)
    assert [(r.registers, r.spill_stores, r.spill_loads, r.stack_bytes, r.smem_bytes) for r in reports] == [
        (40, 4, 12, 8, 1056), (8, 0, 0, 0, 0)]
    assert reports[0].kernel.startswith("kernel") or reports[0].kernel == "_Z6kernelPf"  # demangled if c++filt


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return cuda_ext.compile_check(out_dir=tmp_path_factory.mktemp("nvcc"))


@needs_nvcc
def test_every_kernel_compiles_for_every_dtype(reports):
    names = [r.kernel for r in reports]
    for family in FAMILIES:
        for dtype in DTYPES:
            if family == "shrink_wmma_kernel" and dtype == "float":
                continue  # fp32 keeps full precision on the FMA path
            assert any(family in n and f"<{dtype}" in n for n in names), f"{family}<{dtype}> missing from {names}"
    assert {r.source for r in reports} == {"shrink.cu", "neuron.cu", "expand.cu"}


@needs_nvcc
def test_no_spills_and_register_budget(reports):
    for r in reports:
        assert r.spill_stores == 0 and r.spill_loads == 0, f"{r.kernel} spills: {r}"
        assert r.stack_bytes == 0, f"{r.kernel} uses a stack frame: {r}"
        if r.kernel.startswith(("void shrink", "void expand", "shrink", "expand")):
            assert r.registers <= REGISTER_BUDGET, f"{r.kernel}: {r.registers} registers > {REGISTER_BUDGET}"


@needs_nvcc
def test_compile_check_reports_a_broken_source(tmp_path, monkeypatch):
    broken = tmp_path / "csrc"
    shutil.copytree(cuda_ext.CSRC, broken)
    (broken / "expand.cu").write_text((broken / "expand.cu").read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(cuda_ext, "CSRC", broken)
    monkeypatch.setattr(cuda_ext, "SOURCES", ("expand.cu",))
    with pytest.raises(RuntimeError, match="expand.cu"):
        cuda_ext.compile_check(out_dir=tmp_path / "obj")


def test_compile_check_without_nvcc_says_so(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="nvcc"):
        cuda_ext.compile_check()
