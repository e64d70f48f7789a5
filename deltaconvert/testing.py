"""What the test suites share: the architectures every backend is proven on, a small
model for fast tests of everything around conversion, and a video source that fails
mid-stream."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPORT_ENV = "DELTACONVERT_REPORT"


def report(record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to the file named by ``$DELTACONVERT_REPORT``,
    if set: the numbers a test measured, for summaries (scripts/gpu_check.sh, the
    per-architecture error table in the README)."""
    path = os.environ.get(REPORT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


# The torchvision builders the CPU suite (tests/test_architectures.py) and the GPU suite
# (tests/convert/test_architectures_cuda.py) convert and compare with the original at threshold 0.
ARCHITECTURES = (
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_1", "vgg11_bn",
    "densenet121", "mnasnet0_5", "googlenet", "convnext_tiny",
    "fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large",
)


class SmallNet(nn.Module):
    """A small input-dependent CNN that converts in well under a second, for fast tests
    of everything around conversion (threshold files, save/load, tuning, heatmaps):
    conv+BN (folded), ReLU, max pool, a residual add, ReLU6 and a 1×1 head. Truncating
    ops: ``stem.2``, ``pool``, ``body.1``; ``head`` is a conv that can be forced dense."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6())
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stem(x))
        return self.head(x + self.body(x))


def converted_small_net(**convert_kwargs: Any):
    """``convert(SmallNet())`` with seed-0 weights and a (1, 3, 24, 32) example input;
    dense-island warnings (e.g. a forced-dense ``head``) are silenced."""
    import warnings

    from .convert import DenseFallbackWarning, convert
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseFallbackWarning)
        return convert(SmallNet().eval(), torch.randn(1, 3, 24, 32), **convert_kwargs)


def matches_original(model: nn.Module, frames: list, **convert_kwargs: Any) -> dict[str, Any]:
    """Convert ``model`` at threshold 0 and run it beside the original over ``frames``.

    Returns the conversion's ``dense_islands`` and, as the worst frame's relative error
    (:func:`deltaconvert.metrics.relative_error`):

    Each is the worst over the output's tensors (a detection head's decoded boxes and
    its raw maps are judged apart, so large coordinates cannot hide a wrong map).

    * ``error``: the float32 delta model against the float32 original;
    * ``noise``: the float32 original against the same original in float64 — the
      model's own floating-point noise, the scale ``error`` is judged against
      (random-init networks can amplify rounding enormously);
    * ``error64``: the delta model converted in float64 against the float64 original,
      which is the math itself (re-association only, ~1e-15 per op);
    * ``change``: the original's largest change between consecutive frames (a test
      whose model ignores its input cannot fail).

    The caller's model is not modified.
    """
    import copy
    import warnings

    from .convert import DenseFallbackWarning, convert
    from .delta import tensor_leaves
    from .metrics import relative_error

    def worst(output: Any, reference: Any) -> float:
        pairs = zip(tensor_leaves(output), tensor_leaves(reference), strict=True)
        return max(relative_error(a, b) for a, b in pairs)
    model = copy.deepcopy(model).eval()
    exact = copy.deepcopy(model).double()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseFallbackWarning)
        delta = convert(model, frames[0], **convert_kwargs)
        delta64 = convert(exact, frames[0].double(), **convert_kwargs)
    errors, noise, errors64, changes, previous = [], [], [], [], None
    with torch.no_grad():
        for frame in frames:
            expected, truth = model(frame), exact(frame.double())
            if previous is not None:
                changes.append(worst(expected, previous))
            previous = expected
            errors.append(worst(delta(frame), expected))
            noise.append(worst(expected, truth))
            errors64.append(worst(delta64(frame.double()), truth))
    return {"dense_islands": delta.dense_islands, "error": max(errors), "noise": max(noise),
            "error64": max(errors64), "change": max(changes, default=0.0), "model": delta}


def write_breaking_clip(path: str | os.PathLike, size: tuple[int, int] = (24, 32),
                        frames: int = 20, intact: int = 8, seed: int = 0) -> None:
    """A clip whose first ``intact`` frames decode and whose later data is garbage, so that
    FFmpeg raises while decoding it — as a network camera that drops out mid-run: an mp4
    with its index first (``movflags=faststart``) whose bytes from the packet of frame
    ``intact`` on are overwritten with random bytes. ``size`` is (height, width); needs
    PyAV."""
    import av
    import numpy as np

    height, width = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264rgb", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        stream.options = {"qp": "0", "bf": "0"}  # no B-frames: packets in display order
        for t in range(frames):
            image = np.roll(base, t, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.size]
    data = bytearray(Path(path).read_bytes())
    cut = positions[intact]
    data[cut:] = rng.integers(0, 255, len(data) - cut, dtype=np.uint8).tobytes()
    Path(path).write_bytes(bytes(data))
