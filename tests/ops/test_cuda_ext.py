"""The CUDA extension's Python side, on any machine: build location, error messages, op schemas and fake kernels,
agreement with the public op and the reference backward, the command line."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from hybridtune.ops import cuda_ext, reference
from hybridtune.ops.spike_lora import spike_lora

cpu_only_torch = pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only build of torch")


def test_build_directory_is_outside_the_source_tree_and_keyed(monkeypatch, tmp_path):
    monkeypatch.delenv(cuda_ext.ENV_BUILD_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = cuda_ext.build_directory()
    assert not path.is_relative_to(cuda_ext.CSRC.parent.parent)
    assert path.is_relative_to(tmp_path / "hybridtune" / "torch_extensions")
    assert torch.__version__ in str(path) and path.name == cuda_ext.source_hash()
    monkeypatch.setenv(cuda_ext.ENV_BUILD_DIR, str(tmp_path / "custom"))
    assert cuda_ext.build_directory() == tmp_path / "custom" / cuda_ext.source_hash()


def test_source_hash_follows_the_sources(monkeypatch, tmp_path):
    import shutil

    before = cuda_ext.source_hash()
    copy = tmp_path / "csrc"
    shutil.copytree(cuda_ext.CSRC, copy)
    monkeypatch.setattr(cuda_ext, "CSRC", copy)
    assert cuda_ext.source_hash() == before
    (copy / "common.cuh").write_text((copy / "common.cuh").read_text() + "\n// edit\n")
    assert cuda_ext.source_hash() != before


def test_all_sources_ship_with_the_package():
    for name in (*cuda_ext.SOURCES, *cuda_ext.HEADERS):
        assert (cuda_ext.CSRC / name).is_file(), name


@cpu_only_torch
def test_load_extension_on_cpu_torch_raises_an_actionable_error(monkeypatch):
    monkeypatch.setattr(cuda_ext, "_loaded", None)
    monkeypatch.setattr(cuda_ext, "_failure", None)
    with pytest.raises(cuda_ext.CudaExtensionUnavailable, match="CPU-only build.*'torch' backend"):
        cuda_ext.load_extension()
    # remembered: auto resolution does not retry a build on every call
    first = cuda_ext._failure
    with pytest.raises(cuda_ext.CudaExtensionUnavailable) as again:
        cuda_ext.register_cuda_impl()
    assert again.value is first
    assert cuda_ext.extension_info()["error"] == str(first) and not cuda_ext.is_loaded()


def test_missing_toolkit_and_ninja_are_named(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(cuda_ext.CudaExtensionUnavailable, match="CUDA_HOME"):
        cuda_ext._check_buildable()
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(cuda_ext.CudaExtensionUnavailable, match="ninja"):
        cuda_ext._check_buildable()


def test_arch_list_defaults_only_without_a_visible_gpu(monkeypatch):
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import os

    with cuda_ext._arch_list():
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == cuda_ext.DEFAULT_ARCH_LIST
    assert "TORCH_CUDA_ARCH_LIST" not in os.environ
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    with cuda_ext._arch_list():
        assert os.environ["TORCH_CUDA_ARCH_LIST"] == "9.0"


def _arg_names(schema) -> list[str]:
    return [a.name for a in schema.arguments]


def test_forward_schema_matches_the_public_op():
    public = torch.ops.hybridtune.spike_lora.default._schema
    private = torch.ops.hybridtune_C.spike_lora_fwd.default._schema
    assert _arg_names(private) == _arg_names(public)
    assert [str(a.type) for a in private.arguments] == [str(a.type) for a in public.arguments]
    assert len(private.returns) == len(public.returns) == 3
    assert _arg_names(private) == list(inspect.signature(cuda_ext._spike_lora_cuda_kernel).parameters)


def test_backward_signature_matches_the_reference_backward():
    ref = list(inspect.signature(reference.spike_lora_backward).parameters)
    assert list(inspect.signature(cuda_ext.spike_lora_backward_cuda).parameters) == ref
    assert _arg_names(torch.ops.hybridtune_C.spike_lora_bwd.default._schema) == ref


def _args(neuron="lif", state=True):
    x = torch.randn(2, 5, 8)
    return (x, torch.randn(6, 8), torch.randn(6), torch.randn(3, 8), torch.randn(6, 3), 2.0, neuron,
            torch.ones(3), torch.full((3,), 0.5), torch.zeros(2, 5, dtype=torch.bool),
            torch.zeros(2, 3) if state else None, 0, "atan", 2.0)


def test_fake_kernels_give_the_reference_shapes():
    args = _args()
    out, spikes, state = reference.spike_lora_forward(*args[:12])
    with FakeTensorMode() as mode:
        fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        f_out, f_spikes, f_state = torch.ops.hybridtune_C.spike_lora_fwd(*fake)
        assert (f_out.shape, f_spikes.shape, f_state.shape) == (out.shape, spikes.shape, state.shape)
        needs = [1, 0, 1, 1, 1, 1, 1, 1]
        grads = torch.ops.hybridtune_C.spike_lora_bwd(
            fake[0].new_empty(out.shape), None, None, fake[0], fake[1], fake[3], fake[4], fake[0].new_empty(
                spikes.shape), 2.0, "lif", fake[7], fake[8], fake[9], fake[10], 0, "atan", 2.0, needs)
    want = [args[0], None, args[2], args[3], args[4], args[7], args[8], args[10]]
    for g, w, need in zip(grads, want, needs):
        assert tuple(g.shape) == (tuple(w.shape) if need else (0,))


def test_backward_refuses_surrogates_without_cuda_code():
    with pytest.raises(ValueError, match="no CUDA implementation.*atan"):
        cuda_ext.spike_lora_backward_cuda(None, None, None, *([None] * 5), 1.0, "mt", None, None, None, None, 0,
                                          "my_custom", 1.0, [True] * 8)


def test_private_ops_have_no_cpu_kernel():
    # CPU tensors never reach the kernel: the public op keeps the reference for them
    with pytest.raises(NotImplementedError):
        torch.ops.hybridtune_C.spike_lora_fwd(*_args())
    out, spikes, _ = spike_lora(*_args())
    assert out.shape == (2, 5, 6) and spikes.shape == (2, 5, 3)


def test_cli_info_and_build(capsys):
    assert cuda_ext.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source_hash"] == cuda_ext.source_hash() and info["torch"] == torch.__version__
    if torch.version.cuda is None:
        assert cuda_ext.main(["build"]) == 1
        assert "CPU-only" in capsys.readouterr().err
