"""ultralytics YOLO models (built offline from their yaml files, random weights with
BatchNorm statistics calibrated on the clip): backbone and neck become the delta model,
the head runs dense on the densified maps, and the converted model returns what the
original returns — same structure, every tensor matching at threshold 0 against the
model's own float32-vs-float64 noise, and to ~1e-10 in float64. Also the YOLO wrapper,
a checkpoint file through the CLI, and the caller's model left untouched."""
from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch

import deltaconvert
from deltaconvert.architectures import calibrate_batch_norm
from deltaconvert.delta import tensor_leaves
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import matches_original, report

ultralytics = pytest.importorskip(
    "ultralytics", reason="ultralytics is not installed (pip install 'deltaconvert[dev]')")
from ultralytics import YOLO  # noqa: E402

FRAMES, SIZE, BATCH = 3, 96, 2
NOISE_FACTOR, NOISE_FLOOR, EXACT = 10.0, 1e-6, 1e-10

CONFIGS = ("yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml", "yolov8n-pose.yaml")
# YOLO11's C2PSA block is spatial self-attention (every pixel attends to every pixel):
# its core has no delta form — the view of qkv into (heads, dims, pixels), qᵀ, q·kᵀ, the
# softmax over pixels, its transpose, v·attnᵀ and the view back to a map. The convs
# around it, v's reshape into the positional conv (a channel gather) and the residual
# adds are delta ops.
ISLANDS = {"yolo11n.yaml": 7}
ATTENTION_CORE = ("view", "transpose", "matmul", "softmax", "transpose_1", "matmul_1", "view_1")


def _structure(output):
    if isinstance(output, (tuple, list)):
        return type(output).__name__, [_structure(o) for o in output]
    if isinstance(output, dict):
        return {k: _structure(v) for k, v in output.items()}
    return (tuple(output.shape), output.dtype) if isinstance(output, torch.Tensor) else output


def _calibrated(config: str, frames) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = YOLO(config).model
    return calibrate_batch_norm(model, frames)


@pytest.fixture(scope="module")
def frames():
    return synthetic_video(FRAMES, SIZE, SIZE, batch=BATCH, seed=1)


@pytest.mark.parametrize("config", CONFIGS)
def test_yolo_matches_original(config, frames):
    model = _calibrated(config, frames)
    before = copy.deepcopy(model.state_dict())
    result = matches_original(model, frames)
    delta = result["model"]
    report({"source": "ultralytics", "model": config, "dense_islands": len(result["dense_islands"]),
            "max_rel_error": result["error"], "fp32_vs_fp64_noise": result["noise"],
            "max_rel_error_fp64": result["error64"], "frames": FRAMES,
            "input": [BATCH, 3, SIZE, SIZE]})
    assert len(result["dense_islands"]) == ISLANDS.get(config, 0), result["dense_islands"]
    if config in ISLANDS:
        assert {name.rsplit(".", 1)[-1] for name in result["dense_islands"]} == set(ATTENTION_CORE)
    assert list(delta.conversion["dense_heads"]) == [f"model.{len(model.model) - 1}"]
    assert result["change"] > 1e-3
    assert result["error"] <= NOISE_FACTOR * result["noise"] + NOISE_FLOOR, result
    assert result["error64"] <= EXACT, result
    delta.reset()
    with torch.no_grad():
        assert _structure(delta(frames[0])) == _structure(model(frames[0]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_yolo_wrapper_object_converts_like_its_model(frames):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = YOLO("yolov8n.yaml")
        delta = deltaconvert.convert(wrapper, frames[0])
        expected = wrapper.model.eval()(frames[0])
    got = delta(frames[0])
    for a, b in zip(tensor_leaves(got), tensor_leaves(expected), strict=True):
        torch.testing.assert_close(a, b)
    assert delta.dense_islands == {}


def test_cli_converts_an_ultralytics_checkpoint(tmp_path, frames):
    checkpoint = tmp_path / "best.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        YOLO("yolov8n.yaml").save(checkpoint)
    output = tmp_path / "yolo.delta.pt"
    result = subprocess.run(
        [sys.executable, "-m", "deltaconvert.cli", "convert", "yolo", "--checkpoint",
         str(checkpoint), "--input-size", "96x96", "-o", str(output)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "0 dense islands" in result.stdout
    loaded = deltaconvert.load(output)
    original = ultralytics.nn.tasks.load_checkpoint(str(checkpoint))[0].float().eval()
    with torch.no_grad():
        for a, b in zip(tensor_leaves(loaded(frames[0])), tensor_leaves(original(frames[0])),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


def test_cli_yolo_needs_a_checkpoint_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "deltaconvert.cli", "convert", "yolo", "--checkpoint",
         str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.delta.pt")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "missing.pt: no such file" in result.stderr
