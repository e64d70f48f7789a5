"""Whole converted models on the CUDA backend at threshold 0, eagerly and under
CUDA-graph replay, over ≥ 50 frames of a synthetic static-camera clip (batch 2).

Random-init torchvision models get calibrated BatchNorm statistics first (otherwise some
outputs do not depend on the input).

* fp32: relative error ≤ 1e-4 against the dense fp32 model (TF32 off) on every frame.
  The report also gives both models' errors against the original model in float64, and
  the original's own noise floor: the original once more with channels_last
  activations, against itself (in fp16 for the fp16 cases).
* fp16: relative error ≤ max(1e-2, 5·e16) against the dense fp32 model and against the
  reference backend running the same delta model in fp16, where e16 is the dense fp16
  model's own error against dense fp32 (worst frame). Calibrated random-init BN
  networks are chaotic (rounding noise doubles every few blocks: measured e16 is
  0.4 % for resnet18 but 1.4–4 % for the deeper ones), so 1e-2 is out of reach there
  for any fp16 computation, including the reference backend and the dense model; the
  factor 5 leaves room for the drift of fp16 deltas over the clip (measured 2–3·e16).
  Kernel-level exactness in fp16 is what tests/gpu/test_ops.py checks.

Models are converted on the CPU and moved to the GPU (``convert`` of a CUDA model
fails for ShuffleNet: the channel-shuffle gather index is created on the CPU).

With ``DELTACONVERT_REPORT`` set, each test appends a JSON line with its numbers.
"""
from __future__ import annotations

import copy
import time
import warnings

import pytest
import torch

from deltaconvert.architectures import build_architecture, calibrate_batch_norm
from deltaconvert.convert import convert
from deltaconvert.metrics import main_output, relative_error
from deltaconvert.synthetic import synthetic_video
from deltaconvert.testing import ARCHITECTURES, report

pytestmark = pytest.mark.cuda

MODELS = ARCHITECTURES  # the whole list of the CPU suite
FRAMES = 50
HEIGHT, WIDTH, BATCH = 72, 88, 2
DEVICE = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def video():
    return synthetic_video(FRAMES, HEIGHT, WIDTH, batch=BATCH, seed=1)


_CALIBRATED: dict[str, torch.nn.Module] = {}


def calibrated(name: str, video) -> torch.nn.Module:
    if name not in _CALIBRATED:
        torch.manual_seed(0)
        model = build_architecture(name).to(DEVICE)
        _CALIBRATED[name] = calibrate_batch_norm(model, [f.to(DEVICE) for f in video[:4]])
    return _CALIBRATED[name]


def delta_model(model, example, backend: str, dtype: torch.dtype, graph: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert(copy.deepcopy(model).cpu(), example.cpu(), backend=backend,
                            cuda_graph=graph)
    return converted.to(device=DEVICE, dtype=dtype)


# Known failure, measured on an H200 on 2026-11-22 (eager and graph alike): 1.45e-4 over
# 50 frames, of which 1.07e-4 on frame 0, before any delta: the frame is dense, and only
# the BatchNorm folding (float64, rounded once to fp32) differs from the original. This
# calibrated random-init FCN amplifies half-ulp changes ~1000-fold: the original model's
# own fp32 error against float64 is 7.4e-5, and the original evaluated once more with
# channels_last activations is 8.5e-5 off itself ("dense_layout_error" in the report), so
# two valid fp32 evaluations of it differ by ~1e-4 whatever the backend. The delta frames
# stay at that level (1.29e-4 against float64), and the CPU oracle, at the resolutions of
# the CPU suite, below 1e-4.
FOLDING_FLOOR = {"fcn_resnet50": 1.07e-4}


def _cases():
    for name in MODELS:
        for dtype in (torch.float32, torch.float16):
            for graph in (False, True):
                marks = [pytest.mark.xfail(strict=True, reason=(
                    f"BN folding alone is {FOLDING_FLOOR[name]:.3g} > 1e-4 off on frame 0"))] \
                    if dtype is torch.float32 and name in FOLDING_FLOOR else []
                yield pytest.param(name, dtype, graph, marks=marks,
                                   id=f"{name}-{dtype}-{'graph' if graph else 'eager'}")


@pytest.mark.parametrize("name,dtype,graph", list(_cases()))
def test_model_matches_dense(runtime, video, name, dtype, graph):
    model = calibrated(name, video)
    half = dtype is torch.float16
    delta = delta_model(model, video[0], "cuda", dtype, graph)
    oracle = delta_model(model, video[0], "reference", dtype) if half else None
    dense_half = copy.deepcopy(model).half() if half else None
    exact = None if half else copy.deepcopy(model).double()
    # The original model in this dtype once more, channels_last: how far two valid
    # evaluations of the same model in the same precision are apart (its noise floor).
    layout = copy.deepcopy(dense_half if half else model).to(memory_format=torch.channels_last)
    errors, oracle_errors, e16, e_exact, e32_exact, e_layout = [], [], [], [], [], []
    start = time.perf_counter()
    with torch.no_grad():
        for frame in video:
            x = frame.to(DEVICE)
            expected = main_output(model(x))
            got = main_output(delta(x.to(dtype)))
            errors.append(relative_error(got, expected))
            same_dtype = main_output(dense_half(x.half())) if half else expected
            e_layout.append(relative_error(main_output(layout(
                x.to(dtype).contiguous(memory_format=torch.channels_last))), same_dtype))
            if half:
                oracle_errors.append(relative_error(got, main_output(oracle(x.half()))))
                e16.append(relative_error(same_dtype, expected))
            else:
                truth = main_output(exact(x.double()))
                e_exact.append(relative_error(got.double(), truth))
                e32_exact.append(relative_error(expected.double(), truth))
    torch.cuda.synchronize()
    ops = delta.delta_ops()
    record = {"model": name, "dtype": str(dtype), "graph": graph, "max_rel_error": max(errors),
              "max_rel_error_vs_reference": max(oracle_errors) if half else None,
              "dense_fp16_error": max(e16) if half else None,
              "max_rel_error_vs_fp64": None if half else max(e_exact),
              "dense_fp32_error_vs_fp64": None if half else max(e32_exact),
              "frame0_error": errors[0], "dense_layout_error": max(e_layout),
              "accelerated_ops": sum(op.accelerated is not None for op in ops.values()),
              "ops": len(ops), "seconds": time.perf_counter() - start}
    report(record)
    assert delta.active_backend == "cuda"
    if graph:
        assert delta.graph_replay is not None and delta.graph_replay.captured is not None
    assert len(errors) >= 50
    per_frame = [f"{e:.2g}" for e in errors]
    if not half:
        assert max(errors) <= 1e-4, f"relative error per frame: {per_frame}"
        return
    tolerance = max(1e-2, 5 * max(e16))
    assert max(errors) <= tolerance, (
        f"against dense fp32: {per_frame}; dense fp16 against dense fp32: {max(e16):.3g}")
    assert max(oracle_errors) <= tolerance, (
        f"against the reference backend in fp16: {[f'{e:.2g}' for e in oracle_errors]}; "
        f"dense fp16 against dense fp32: {max(e16):.3g}")


RESTART_FRAMES = 6


@pytest.mark.dense_restart
@pytest.mark.parametrize("name", MODELS)
def test_replays_restart_densely_when_every_pixel_changes(runtime, video, name):
    """fp16 under CUDA-graph replay at threshold 0: the clip's sensor noise changes every
    input pixel, so every replayed frame takes the dense restart branch (every op dense,
    channels_last, writing its state in place); its outputs stay within the fp16
    tolerance of the test above on every frame."""
    model = calibrated(name, video)
    delta = delta_model(model, video[0], "cuda", torch.float16, graph=True)
    assert_fp16_graph_follows(model, delta, video[:RESTART_FRAMES])
    # frame 0 is dense, then the eager delta frames (one, and one more on a settled
    # dense-delta plan); the captured frame (eagerly, before its capture) and every later
    # one restart
    eager = delta.graph_replay.eager_delta_frames
    assert 1 <= eager <= 2 and delta.stats()["dense_restarts"] == RESTART_FRAMES - 1 - eager


def assert_fp16_graph_follows(model, delta, frames) -> None:
    """``delta`` (fp16, CUDA graph) within the fp16 tolerance of test_model_matches_dense
    of ``model`` (fp32) on every frame of ``frames``."""
    dense_half = copy.deepcopy(model).half()
    errors, e16 = [], []
    with torch.no_grad():
        for frame in frames:
            x = frame.to(DEVICE)
            expected = main_output(model(x))
            errors.append(relative_error(main_output(delta(x.half())), expected))
            e16.append(relative_error(main_output(dense_half(x.half())), expected))
    tolerance = max(1e-2, 5 * max(e16))
    assert max(errors) <= tolerance, (
        f"against dense fp32: {[f'{e:.2g}' for e in errors]}; dense fp16: {max(e16):.3g}")


DENSE_LAYER_FRAMES = 12


@pytest.mark.dense_layers
@pytest.mark.parametrize("name", MODELS)
def test_dense_layers_follow_the_original(runtime, video, name, monkeypatch):
    """fp16 under CUDA-graph replay at threshold 0 with every eligible conv a dense
    layer (``backends/cuda/dense_layers.py``: cuDNN recomputes its pre-activation from
    its input's sent values): within the fp16 tolerance of the test above on every
    frame, and at least one conv of every model runs dense (its stem)."""
    from deltaconvert.backends.cuda import dense_layers
    monkeypatch.setattr(dense_layers, "DENSE_FROM", 0.0)
    monkeypatch.setattr(dense_layers, "DENSE_SPATIAL_FROM", 0.0)
    monkeypatch.setattr(dense_layers, "DENSE_NARROW_FROM", 0.0)
    model = calibrated(name, video)
    delta = delta_model(model, video[0], "cuda", torch.float16, graph=True)
    assert_fp16_graph_follows(model, delta, video[:DENSE_LAYER_FRAMES])
    dense = [n for n, op in delta.delta_ops().items() if getattr(op.accelerated, "dense", None)]
    assert dense, "no conv ran as a dense layer"
