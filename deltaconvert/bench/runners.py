"""What the benchmark runs (dense baselines and delta models) and how it measures them.

A *runner* processes a clip frame by frame: ``reset()`` starts a sequence,
``runner(frame)`` returns the output for one frame. Every runner receives the same
ImageNet-normalised fp32 frames already on the device and converts them into its own
input (dtype, channels_last) inside the step, so that cost is counted for everyone.

Three passes per runner, each over the same frames, each starting a new sequence:

1. :func:`accuracy_pass` (untimed, doubles as warm-up: cuDNN autotuning, allocator,
   graph capture, compilation): relative L2 error of every frame's output and pooled
   output against dense fp32 eager (TF32 off); for delta models, the work fraction of
   every frame from ``model.stats()``.
2. :func:`timed_pass`: per-frame milliseconds (:func:`~deltaconvert.bench.timing.frame_times`:
   CUDA events around each step, read once at the end; wall time on a CPU), plus
   the peak GPU memory beyond what the harness held before the runner was built, both
   allocated by live tensors and reserved by the caching allocator (a CUDA graph's
   private pool shows only in the latter). Delta models
   run with statistics tracking off here.
3. :func:`count_launches`: a short ``torch.profiler`` pass counting GPU kernels executed
   and host launch calls per frame, kept apart so that profiling does not distort times.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..metrics import main_output, pooled, relative_error
from ..timing import frame_times, profiled, synchronize
from .timing import GraphReplay

MODES = ("eager", "graph", "compile")


@dataclass(frozen=True)
class Precision:
    """A numeric mode: the parameter and input dtype, and whether fp32 matrix work may
    use TF32 tensor cores."""

    name: str
    dtype: torch.dtype
    tf32: bool

    @contextlib.contextmanager
    def flags(self) -> Iterator[None]:
        """Set the TF32 switches for the duration (they are read at launch time)."""
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


PRECISIONS = {
    "fp32": Precision("fp32", torch.float32, tf32=False),
    "tf32": Precision("tf32", torch.float32, tf32=True),
    "fp16": Precision("fp16", torch.float16, tf32=False),
}


class Runner:
    """A model moved to ``device`` in one precision (parameters channels_last), run
    frame by frame. Subclasses override :meth:`step`."""

    kind = "dense"
    grad_mode: Callable[[], Any] = torch.inference_mode

    def __init__(self, name: str, model: nn.Module, precision: Precision, device: torch.device) -> None:
        self.name = name
        self.precision = precision
        self.device = device
        self.model = model.to(device=device, dtype=precision.dtype, memory_format=torch.channels_last)

    def prepare(self, frame: torch.Tensor) -> torch.Tensor:
        return frame.to(dtype=self.precision.dtype, memory_format=torch.channels_last)

    def reset(self) -> None:
        """Start a new sequence (no-op for dense models)."""

    def __call__(self, frame: torch.Tensor) -> Any:
        with self.grad_mode(), self.precision.flags():
            return self.step(frame)

    def step(self, frame: torch.Tensor) -> Any:
        return self.model(self.prepare(frame))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "precision": self.precision.name}


class DenseRunner(Runner):
    """The original model, dense, in one of :data:`MODES`:

    * ``eager``: plain PyTorch calls;
    * ``graph``: the forward captured once in a CUDA graph on the first frame
      (:class:`~deltaconvert.bench.timing.GraphReplay`); each frame is copied into the
      captured input and replayed;
    * ``compile``: ``torch.compile(mode="reduce-overhead")`` (Inductor with CUDA graphs).

    It runs a copy of ``model``.
    """

    def __init__(self, model: nn.Module, precision: Precision, mode: str, device: torch.device) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
        if mode != "eager" and device.type != "cuda":
            raise RuntimeError(f"{mode} mode needs a CUDA device")
        super().__init__(f"dense {precision.name} {mode}", copy.deepcopy(model), precision, device)
        self.mode = mode
        self._replay: GraphReplay | None = None
        self._compiled = torch.compile(self.model, mode="reduce-overhead") if mode == "compile" else None

    def step(self, frame: torch.Tensor) -> Any:
        if self.mode == "eager":
            return self.model(self.prepare(frame))
        if self.mode == "compile":
            torch.compiler.cudagraph_mark_step_begin()
            return self._compiled(self.prepare(frame))
        if self._replay is None:
            self._replay = GraphReplay(self.model, self.prepare(frame))
        return self._replay(frame)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": self.mode}


class DeltaRunner(Runner):
    """A converted delta model (any backend), with one threshold configuration at a
    time (:meth:`configure`). ``graph`` says whether it was converted with
    ``cuda_graph=True``. It runs ``model`` itself (converted models cannot be deep-copied
    yet) and moves it to the CPU in :meth:`release`."""

    kind = "delta"
    grad_mode = torch.no_grad  # state buffers must stay usable outside inference mode

    def __init__(self, model: nn.Module, precision: Precision, device: torch.device, *, graph: bool) -> None:
        super().__init__("", model, precision, device)
        self.graph = graph
        self.label = ""

    def configure(self, label: str, apply: Callable[[nn.Module], None]) -> None:
        """Apply a threshold configuration (``apply(model)``) and name the runner."""
        apply(self.model)
        self.label = label
        self.name = f"delta {self.precision.name}{' graph' if self.graph else ''} {label}"
        self.reset()

    def reset(self) -> None:
        self.model.reset()

    def release(self) -> None:
        self.model.to("cpu")

    def track_stats(self, enabled: bool) -> None:
        self.model.track_stats = enabled

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "mode": "graph" if self.graph else "eager",
                "thresholds": self.label, "backend": self.model.active_backend}


class Reference:
    """Dense fp32 eager outputs (TF32 off) of a clip: the first frames are computed up
    front and kept on the device while they fit in ``budget_bytes`` (so that the
    harness's memory is settled before any runner is measured), the rest recomputed
    when asked for."""

    def __init__(self, runner: DenseRunner, frames: list[torch.Tensor], budget_bytes: int) -> None:
        self.runner, self.frames = runner, frames
        self.cache: list[torch.Tensor] = []
        used = 0
        for index in range(len(frames)):
            out = self._compute(index)
            used += out.numel() * out.element_size()
            if used > budget_bytes:
                break
            self.cache.append(out)

    def _compute(self, index: int) -> torch.Tensor:
        return main_output(self.runner(self.frames[index])).float().clone()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.cache[index] if index < len(self.cache) else self._compute(index)


@dataclass
class Accuracy:
    """Per-frame relative L2 errors against dense fp32; for delta models, per-frame
    work fractions, ``model.stats()`` and ``model.state_bytes()`` at the clip's end."""

    output: list[float] = field(default_factory=list)
    pooled: list[float] = field(default_factory=list)
    work_fraction: list[float | None] = field(default_factory=list)
    stats: dict[str, Any] | None = None
    state_bytes: int | None = None


def accuracy_pass(runner: Runner, frames: list[torch.Tensor], reference: Reference) -> Accuracy:
    """Run the clip once (untimed); compare every frame with the reference."""
    is_delta = isinstance(runner, DeltaRunner)
    if is_delta:
        runner.track_stats(True)
    runner.reset()
    result = Accuracy()
    for index, frame in enumerate(frames):
        out = main_output(runner(frame)).float()
        expected = reference[index]
        result.output.append(relative_error(out, expected))
        result.pooled.append(relative_error(pooled(out), pooled(expected)))
        work = runner.model.stats()["work_fraction_last"] if is_delta and index else None
        result.work_fraction.append(work)
    if is_delta:
        result.stats, result.state_bytes = runner.model.stats(), runner.model.state_bytes()
    return result


@dataclass(frozen=True)
class Memory:
    """Bytes allocated by tensors and reserved by PyTorch's caching allocator."""

    allocated: int
    reserved: int


def memory_now(device: torch.device) -> Memory:
    """What the process holds on ``device`` now, after freeing unused cached blocks
    (zeros on a CPU)."""
    gc.collect()
    if device.type != "cuda":
        return Memory(0, 0)
    synchronize(device)
    torch.cuda.empty_cache()
    return Memory(torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device))


@dataclass
class Timing:
    """Milliseconds of every frame, and the peak memory beyond the harness (None on a CPU)."""

    ms_per_frame: list[float]
    peak: Memory | None


def timed_pass(runner: Runner, frames: list[torch.Tensor], harness: Memory) -> Timing:
    """Per-frame milliseconds of one sequence, and the peak memory during it beyond
    ``harness`` (what the benchmark held before the runner was built)."""
    if isinstance(runner, DeltaRunner):
        runner.track_stats(False)
    device = runner.device
    runner.reset()
    if device.type != "cuda":
        return Timing(frame_times(runner, frames, device), None)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = frame_times(runner, frames, device)
    peak = Memory(torch.cuda.max_memory_allocated(device) - harness.allocated,
                  torch.cuda.max_memory_reserved(device) - harness.reserved)
    return Timing(times, peak)


# Frames before a runner's steady state: a delta model's dense first frame, its eager
# first delta frame, the eager frame on its settled dense-layer plan and the frame its
# CUDA graph is captured on (a dense graph captures on the first, torch.compile records
# over its first calls).
SETTLE_FRAMES = 4

LAUNCH_CALL = re.compile(r"^cu(da)?(Graph)?Launch|^cuLaunch")


def count_launches(runner: Runner, frames: list[torch.Tensor]) -> tuple[float, float] | None:
    """(GPU kernels executed, host launch calls) per frame in a steady state: over
    ``frames[SETTLE_FRAMES:]``, after the first frames ran outside the profile; None on a
    CPU or without a frame to profile. A CUDA-graph replay is one launch call however
    many kernels it runs."""
    if runner.device.type != "cuda" or len(frames) <= SETTLE_FRAMES:
        return None
    from torch.autograd import DeviceType

    if isinstance(runner, DeltaRunner):
        runner.track_stats(False)
    runner.reset()
    for frame in frames[:SETTLE_FRAMES]:
        runner(frame)
    synchronize(runner.device)
    with profiled() as prof:
        for frame in frames[SETTLE_FRAMES:]:
            runner(frame)
        synchronize(runner.device)
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == DeviceType.CUDA
                  and not e.name.startswith(("Memcpy", "Memset")))
    calls = sum(1 for e in events if e.device_type == DeviceType.CPU and LAUNCH_CALL.match(e.name))
    count = len(frames) - SETTLE_FRAMES
    return kernels / count, calls / count
