"""The unchanged frame: what a delta model costs when nothing changes, measured around
the model call as a user makes it.

The runner (a delta model at one threshold setting) starts a sequence on ``frame`` and
then receives that same frame again and again, so every delta frame has work 0. After
:data:`WARMUP_CALLS` calls (the dense first frame, the eager delta frame, the CUDA-graph
capture), ``calls`` further calls are measured three ways, each in its own loop:

* ``wall_ms``: host wall time of one call with a device synchronisation before and after
  (:func:`~deltaconvert.bench.timing.timed`): the latency a user sees;
* ``host_ms``: host wall time for the call to return, each call started on an idle
  device (:func:`~deltaconvert.timing.host_times`): the host side of a frame alone
  (Python, checks, launches or the graph replay) — calls made back to back would wait
  for a full launch queue and report device time as host time;
* ``frame_ms``: as the timed pass of every runner measures a frame
  (:func:`~deltaconvert.bench.timing.frame_times`): on a GPU, CUDA events recorded
  around each call on the current stream and read at the end, i.e. the GPU time of a
  frame in a pipelined loop, including any wait for the host where the host is slower
  than the device; on a CPU, the same as ``host_ms``.

Each is the median over the calls, with statistics tracking on (the default of a
converted model) and off.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch

from .runners import DeltaRunner
from ..timing import frame_times, host_times, timed

WARMUP_CALLS = 5


def unchanged_frame(runner: DeltaRunner, frame: torch.Tensor, calls: int) -> dict[str, dict[str, Any]]:
    """``{"statistics on": {...}, "statistics off": {...}}``, each with ``wall_ms``,
    ``host_ms``, ``frame_ms`` (medians over ``calls``), ``calls`` and the work fraction
    of the last call with statistics on (0 when nothing changed)."""
    device = runner.device
    result = {}
    for label, stats in (("statistics on", True), ("statistics off", False)):
        runner.track_stats(stats)
        runner.reset()
        repeated = [frame] * calls
        for _ in range(WARMUP_CALLS):
            runner(frame)
        wall = [timed(device, runner, frame)[1] for _ in repeated]
        host = host_times(runner, repeated, device)
        frame_ms = frame_times(runner, repeated, device)
        result[label] = {"wall_ms": statistics.median(wall), "host_ms": statistics.median(host),
                         "frame_ms": statistics.median(frame_ms), "calls": calls}
        if stats:
            result[label]["work_fraction"] = runner.model.stats()["work_fraction_last"]
    return result
