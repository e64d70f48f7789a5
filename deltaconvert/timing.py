"""Milliseconds per call, on a GPU or a CPU: the timing shared by the dense-tail planner,
``deltaconvert run``, the benchmark, the demo and the profiling scripts.

* :func:`frame_times`: milliseconds of every call over a sequence of frames, CUDA events
  recorded around each call on the current stream and read once at the end (no
  synchronisation between frames), ``time.perf_counter`` on a CPU.
* :func:`host_times`: host wall time of every call made on an idle device (the host side
  of a call alone);
* :func:`timed`: one call and its milliseconds, synchronising with the device before and
  after (for loops that need each output before the next frame);
* :func:`device_time`: the device's milliseconds per call of a short GPU operation, its
  launches queued up front so that the host's launch cost does not count;
* :func:`profiled`: a ``torch.profiler`` session that leaves later timings undisturbed.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings
from typing import Any, Callable, Iterator, Sequence

import torch


def synchronize(device: torch.device) -> None:
    """Wait for all work on ``device`` (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frame_times(fn: Callable[[torch.Tensor], Any], frames: Sequence[torch.Tensor],
                device: torch.device) -> list[float]:
    """Milliseconds of ``fn(frame)`` for every frame, in order. On a GPU, CUDA events
    recorded around each call on the current stream and read after the last one (so the
    host may run ahead of the device, as in a video pipeline); on a CPU, wall time."""
    if device.type != "cuda":
        return host_times(fn, frames, device)
    synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in frames]
    for frame, (start, end) in zip(frames, events):
        start.record()
        fn(frame)
        end.record()
    synchronize(device)
    return [start.elapsed_time(end) for start, end in events]


def host_times(fn: Callable[[torch.Tensor], Any], frames: Sequence[torch.Tensor],
               device: torch.device) -> list[float]:
    """Milliseconds of host wall time for each ``fn(frame)`` to return, each call started
    on an idle device (a synchronisation before it, outside the timing): the host side of
    the call alone. Calls made back to back would queue up behind a slower device and,
    once its launch queue is full, each would wait for a frame of device time and report
    it as host time."""
    times = []
    for frame in frames:
        synchronize(device)
        start = time.perf_counter()
        fn(frame)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def timed(device: torch.device, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``(fn(*args), milliseconds)``, synchronising with a CUDA device before and after."""
    synchronize(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronize(device)
    return out, (time.perf_counter() - start) * 1e3


# Device cycles of the sleep that device_time queues its calls behind: ~0.5 ms at the
# clocks of current data-centre GPUs, time enough for the host to launch a few calls.
QUEUE_CYCLES = 1_000_000


def device_time(fn: Callable[[], Any], device: torch.device, calls: int = 3) -> float:
    """Milliseconds per call of ``fn()`` (a short operation on ``device``, launched on
    the current stream), over ``calls`` calls after one untimed call. On a GPU the timed
    calls queue behind a device sleep (:data:`QUEUE_CYCLES`), so they run back to back
    between two CUDA events and a launch costing the host more than the kernel takes
    does not count; one synchronisation at the end. On a CPU, wall time."""
    fn()
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) * 1e3 / calls
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(QUEUE_CYCLES)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / calls


# CUPTI detach after a profile works with CUDA graphs from CUDA 12.6 on; before it, torch
# itself turns the detach off when graphs are in use (torch/profiler/profiler.py).
TEARDOWN_MIN_CUDA = (12, 6)


@contextlib.contextmanager
def profiled(*, host: bool = True) -> Iterator[Any]:
    """A ``torch.profiler.profile`` over the block, recording CUDA activity (and the
    host's when ``host``), its own warnings silenced; yields the profiler.

    Unless the environment already says otherwise, Kineto is asked to detach CUPTI when
    the session ends (``TEARDOWN_CUPTI=1``, set before the session starts) on CUDA ≥ 12.6.
    Left attached, CUPTI slows every later launch in the process: measured on an H200
    (torch 2.11, CUDA 13; scripts/PERF_NOTES.md §31), a dense fp16 eager frame went
    4.5 → 8.2 ms and a replayed delta frame's host side 75 → 161 µs after one profile
    (6.2 ms and 100 µs after a second), so every timing taken after a profile was wrong;
    with the detach, both stayed at their first values. The setting stays in the process
    environment (Kineto may read it after the block, when it processes the session), so
    later profiler sessions of the process, and its children, detach too — what Kineto
    itself does by default on CUDA ≥ 12.6 since kineto#1264.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = tuple(int(part) for part in (torch.version.cuda or "0.0").split(".")[:2])
    if cuda >= TEARDOWN_MIN_CUDA:
        os.environ.setdefault("TEARDOWN_CUPTI", "1")
    activities = [ProfilerActivity.CUDA] + ([ProfilerActivity.CPU] if host else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the profiler's notes on its own cycles
        with profile(activities=activities) as prof:
            yield prof
