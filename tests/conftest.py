"""Shared test configuration: deterministic seeds; the CUDA backend's fixtures (tests
that need it take ``runtime``, which skips with the reason when there is no GPU, no
PyCUDA or no nvcc)."""
from __future__ import annotations

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


@pytest.fixture(autouse=True)
def no_dense_restart(request, monkeypatch):
    """CUDA-graph replays run their delta frames: the dense restart on scene cuts
    (``backends/cuda/frame_skip.py``) would replace the delta frames of the synthetic
    clips' noisy inputs (every pixel changes at input threshold 0). Tests of the restart
    are marked ``dense_restart``."""
    if "dense_restart" in request.keywords:
        yield
        return
    import deltaconvert.backends.cuda.frame_skip as frame_skip
    monkeypatch.setattr(frame_skip, "RESTART_FRACTION", 0.0)
    yield


@pytest.fixture(autouse=True)
def no_dense_layers(request, monkeypatch):
    """Delta frames run the delta kernels: the per-layer dense recomputation
    (``backends/cuda/dense_layers.py``) would take over most convs of the synthetic
    clips, whose noise makes every pixel a candidate at threshold 0. Tests of dense
    layers are marked ``dense_layers``."""
    if "dense_layers" in request.keywords:
        yield
        return
    import deltaconvert.backends.cuda.dense_layers as dense_layers
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 2.0)
    yield
