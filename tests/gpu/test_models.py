"""Whole converted models on the CUDA backend against the dense models, at threshold 0.

Random-init torchvision models get calibrated BatchNorm statistics first (otherwise some
outputs do not depend on the input). Each runs ≥ 50 frames of a synthetic static-camera
clip (batch 2) eagerly and under CUDA-graph replay, in fp32 (relative error ≤ 1e-4
against the dense fp32 model; TF32 off) and fp16 (≤ 1e-2 against the dense fp32 model).
With ``DELTACONVERT_GPU_REPORT`` set, each test appends a JSON line with its numbers.
"""
from __future__ import annotations

import copy
import json
import os
import time
import warnings

import pytest
import torch

from deltaconvert.convert import convert
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import build_torchvision, calibrate_batchnorm, main_output, relative_error

pytestmark = pytest.mark.cuda

MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0",
          "shufflenet_v2_x1_0", "densenet121", "convnext_tiny", "deeplabv3_mobilenet_v3_large"]
FRAMES = 50
HEIGHT, WIDTH, BATCH = 72, 88, 2
TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2}
DEVICE = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def video():
    return synthetic_video(FRAMES, HEIGHT, WIDTH, batch=BATCH, seed=1)


@pytest.fixture(autouse=True)
def exact_fp32():
    """Dense fp32 baselines without TF32 (it alone differs from fp32 by ~1e-3)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


_CALIBRATED: dict[str, torch.nn.Module] = {}


def calibrated(name: str, video) -> torch.nn.Module:
    if name not in _CALIBRATED:
        torch.manual_seed(0)
        model = build_torchvision(name).to(DEVICE)
        _CALIBRATED[name] = calibrate_batchnorm(model, [f.to(DEVICE) for f in video[:4]])
    return _CALIBRATED[name]


def _report(record: dict) -> None:
    path = os.environ.get("DELTACONVERT_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "graph"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("name", MODELS)
def test_model_matches_dense(runtime, video, name, dtype, graph):
    model = calibrated(name, video)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        delta = convert(model, video[0].to(DEVICE), backend="cuda", cuda_graph=graph)
    delta = delta.to(dtype)
    dense_half = copy.deepcopy(model).half() if dtype is torch.float16 else None
    errors, dense_half_errors = [], []
    start = time.perf_counter()
    with torch.no_grad():
        for frame in video:
            x = frame.to(DEVICE)
            expected = main_output(model(x))
            got = main_output(delta(x.to(dtype)))
            errors.append(relative_error(got, expected))
            if dense_half is not None and len(dense_half_errors) < 3:
                dense_half_errors.append(relative_error(main_output(dense_half(x.half())), expected))
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    ops = delta.delta_ops()
    accelerated = sum(op.accelerated is not None for op in ops.values())
    _report({"model": name, "dtype": str(dtype), "graph": graph, "max_rel_error": max(errors),
             "last_rel_error": errors[-1], "accelerated_ops": accelerated, "ops": len(ops),
             "seconds": elapsed})
    assert delta.active_backend == "cuda"
    if graph:
        assert delta._cuda_graph_state is not None and delta._cuda_graph_state.captured is not None
    assert len(errors) >= 50
    assert max(errors) <= TOLERANCE[dtype], (
        f"max relative error {max(errors):.3g} (per frame: {[f'{e:.2g}' for e in errors]}); "
        f"dense fp16 vs fp32 on the first frames: {dense_half_errors}")
