"""What the CUDA backend says when it cannot run (CPU-only checks: no GPU needed)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from deltaconvert.backends.cuda import errors
from deltaconvert.errors import BackendUnavailable


@pytest.mark.skipif(importlib.util.find_spec("pycuda") is not None, reason="PyCUDA is installed")
def test_missing_pycuda_names_the_fix():
    with pytest.raises(BackendUnavailable, match=r"deltaconvert\[cuda\].*backend='reference'"):
        errors.driver_module()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_no_gpu_is_a_reason():
    reason = errors.unavailable_reason()
    assert reason is not None and "backend='reference'" in reason


def test_missing_nvcc_names_the_fix(monkeypatch):
    monkeypatch.setattr(errors.shutil, "which", lambda name: None)
    errors._nvcc_problem.cache_clear()
    try:
        problem = errors._nvcc_problem()
    finally:
        errors._nvcc_problem.cache_clear()
    assert problem is not None and "PATH" in problem and "backend='reference'" in problem


def test_kernel_arguments_outside_int32_are_refused():
    from deltaconvert.backends.cuda.kernels import Args
    with pytest.raises(ValueError, match="layer1.conv: .*32-bit"):
        Args("layer1.conv").ints(2**31)
