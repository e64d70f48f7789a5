"""Shared test configuration: deterministic seeds; the CUDA backend's fixtures (tests
that need it take ``runtime``, which skips with the reason when there is no GPU, no
PyCUDA or no nvcc)."""
from __future__ import annotations

import importlib

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def cuda_backend_problem() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA device"
    from deltaconvert.backends.cuda import unavailable_reason
    return unavailable_reason()


@pytest.fixture(scope="session")
def runtime():
    """The CUDA backend's runtime of device 0."""
    problem = cuda_backend_problem()
    if problem is not None:
        pytest.skip(f"CUDA backend unavailable: {problem}")
    from deltaconvert.backends.cuda.device import device_runtime
    return device_runtime(torch.device("cuda", 0))


@pytest.fixture
def poisoned(runtime):
    """New kernel outputs start as NaN values and 0xFF mask bytes during the test."""
    from deltaconvert.backends.cuda import poison_outputs
    poison_outputs(True)
    yield runtime
    poison_outputs(False)


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 without TF32 (cuDNN's default TF32 alone differs from fp32 by ~1e-3), for
    the reference ops and the dense baselines alike."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# What would replace the delta frames of the synthetic clips, whose sensor noise changes
# every pixel at threshold 0: the dense restart on scene cuts (backends/cuda/frame_skip.py)
# and dense layers (backends/cuda/dense_layers.py). Each is off in every test not marked
# with its marker: [(module, setting, value that turns it off)].
_DENSE_LAYERS = "deltaconvert.backends.cuda.dense_layers"
OFF_UNLESS_MARKED = {
    "dense_restart": [("deltaconvert.backends.cuda.frame_skip", "RESTART_FRACTION", 0.0)],
    "dense_layers": [(_DENSE_LAYERS, name, 2.0)
                     for name in ("DENSE_FROM", "DENSE_SPATIAL_FROM", "DENSE_NARROW_FROM",
                                  "DENSE_DEPTHWISE_FROM")],
}


@pytest.fixture(autouse=True)
def delta_frames_run_the_delta_kernels(request, monkeypatch):
    """Graph replays and eager frames run the delta kernels (see OFF_UNLESS_MARKED)."""
    for marker, settings in OFF_UNLESS_MARKED.items():
        if marker not in request.keywords:
            for module, setting, off in settings:
                monkeypatch.setattr(importlib.import_module(module), setting, off)
    yield
