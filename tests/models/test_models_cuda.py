"""timm and ultralytics models on the CUDA backend at threshold 0 (marker ``cuda``).

Converted on the CPU, moved to the GPU, run eagerly over a synthetic clip (batch 2) and
compared on every frame with the original on the GPU (fp32, TF32 off): relative error
≤ 10·noise + 1e-5 per output tensor, where noise is the original's own fp32-vs-fp64
error on the same frame. timm and ultralytics come from the staged wheels on the GPU
machine (scripts/stage_gpu_wheels.sh); without them the tests skip.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from deltaconvert.architectures import calibrate_batch_norm
from deltaconvert.convert import convert
from deltaconvert.delta import tensor_leaves
from deltaconvert.metrics import relative_error
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import report

pytestmark = pytest.mark.cuda

FRAMES, HEIGHT, WIDTH, BATCH = 20, 96, 128, 2
DEVICE = torch.device("cuda", 0)


def _worst(output, reference) -> float:
    return max(relative_error(a, b) for a, b in
               zip(tensor_leaves(output), tensor_leaves(reference), strict=True))


def _build(source: str, name: str, kwargs: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if source == "timm":
            timm = pytest.importorskip("timm", reason="timm not staged: scripts/stage_gpu_wheels.sh")
            return timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
        pytest.importorskip("ultralytics", reason="ultralytics not staged: scripts/stage_gpu_wheels.sh")
        from ultralytics import YOLO
        return YOLO(name).model


# Split attention and selective kernels (channel-group ops), TF-'same' max pooling
# (constant −∞ padding) and functional/fused norms, besides a detector.
@pytest.mark.parametrize("source,name,kwargs", [
    ("timm", "efficientnet_b0", {}), ("timm", "tf_mixnet_s", {}), ("timm", "nf_regnet_b0", {}),
    ("timm", "resnest14d", {}), ("timm", "skresnet18", {}),
    ("timm", "resnetv2_18", {"stem_type": "same"}), ("ultralytics", "yolov8n.yaml", {})],
    ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_model_matches_original_on_cuda(runtime, source, name, kwargs):
    video = synthetic_video(FRAMES, HEIGHT, WIDTH, batch=BATCH, seed=1)
    model = calibrate_batch_norm(_build(source, name, kwargs), video[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        delta = convert(copy.deepcopy(model), video[0], backend="cuda").to(DEVICE)
    model = model.to(DEVICE)
    exact = copy.deepcopy(model).double()
    errors, noise = [], []
    with torch.no_grad():
        for frame in video:
            x = frame.to(DEVICE)
            expected = model(x)
            errors.append(_worst(delta(x), expected))
            noise.append(_worst(expected, exact(x.double())))
    report({"source": source, "model": name, "backend": delta.active_backend,
            "dense_islands": len(delta.dense_islands), "max_rel_error": max(errors),
            "fp32_vs_fp64_noise": max(noise), "frames": FRAMES,
            "accelerated_ops": sum(op.accelerated is not None for op in delta.delta_ops().values()),
            "ops": len(delta.delta_ops())})
    assert delta.active_backend == "cuda"
    assert delta.dense_islands == {}
    bound = [10 * n + 1e-5 for n in noise]
    assert all(e <= b for e, b in zip(errors, bound)), (
        f"per frame: {[f'{e:.2g}' for e in errors]}; noise {[f'{n:.2g}' for n in noise]}")
