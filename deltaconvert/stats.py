"""Update statistics of a converted model: per-layer update fractions and the work
fraction (see :meth:`DeltaGraphModule.stats`).

Counting happens on the device without a host sync. :class:`UpdateCounters` holds one
int32 counter per op for the current delta frame and an int64 running total; a kernel
that writes an op's output mask adds the number of set mask bytes to the op's counter
(``block_count`` in ``cuda_kernels/common.cuh``), other ops add ``mask.sum()`` (see
:meth:`DeltaOp._record <deltaconvert.ops.base.DeltaOp._record>`). Each delta frame
starts with :meth:`UpdateCounters.begin_frame` (``total += frame; frame = 0``: two
small device ops for the whole model, inside a captured CUDA graph too), so a frame
with statistics on costs the model two kernels plus one atomic add per mask-writing
block that set a mask byte, instead of a reduction per op.

A delta frame that the CUDA backend runs as a dense restart (a scene cut, see
``backends/cuda/frame_skip.py``) sets every op's count to its whole mask and adds one
to ``restarts``.

Invariants: after ``k`` delta frames with statistics on, ``frame[i]`` is op ``i``'s
updated-pixel count of the last of them and ``total[i] + frame[i]`` the sum over all
``k``; frames run with statistics off leave both untouched.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from .ops.base import DeltaOp


class UpdateCounters:
    """The per-op update counters of one sequence of a model (see the module docstring)."""

    def __init__(self, ops: Mapping[str, DeltaOp], device: torch.device) -> None:
        self.names = list(ops)
        self.frame = torch.zeros(len(self.names), dtype=torch.int32, device=device)
        self.total = torch.zeros(len(self.names), dtype=torch.int64, device=device)
        self.whole: torch.Tensor | None = None  # see note_sizes
        self.restarts = torch.zeros(1, dtype=torch.int64, device=device)
        self._whole_sizes: list[int] = []

    def attach(self, ops: Mapping[str, DeltaOp], enabled: bool) -> None:
        """Give every op its counter slot (a view of :attr:`frame`), or None when
        statistics are off."""
        for index, name in enumerate(self.names):
            ops[name].update_counter = self.frame[index:index + 1] if enabled else None

    def note_sizes(self, ops: Mapping[str, DeltaOp]) -> None:
        """Every op's mask size as of the last delta frame, the count of a frame that
        updates everything (a dense restart, :meth:`restarted`); outside any capture."""
        sizes = [ops[name].mask_pixels() for name in self.names]
        if sizes != self._whole_sizes:
            self.whole = torch.tensor(sizes, dtype=torch.int32, device=self.frame.device)
            self._whole_sizes = sizes

    def restarted(self) -> None:
        """This frame ran dense (a restart, counted in :attr:`restarts`): every op updated
        every pixel of its mask (as of the last eager delta frame; zero before one)."""
        if self.whole is None:
            self.frame.zero_()
        else:
            self.frame.copy_(self.whole)
        self.restarts.add_(1)

    def begin_frame(self) -> None:
        """Fold the previous delta frame's counts into the totals and zero them."""
        self.total.add_(self.frame)
        self.frame.zero_()

    def restart_count(self) -> int:
        """Delta frames that ran as dense restarts (one device sync)."""
        return int(self.restarts.item())

    def counts(self) -> dict[str, tuple[int, int]]:
        """(last frame, all frames) updated-pixel counts by op name (one device sync)."""
        last = self.frame.tolist()
        total = (self.total + self.frame).tolist()
        return {name: (last[i], total[i]) for i, name in enumerate(self.names)}


def collect_stats(ops: Mapping[str, DeltaOp], frames: int,
                  counters: UpdateCounters | None) -> dict[str, Any]:
    """Statistics of ``ops`` (by name, in graph order) after ``frames`` delta frames with
    statistics on; see :meth:`DeltaGraphModule.stats` for the keys."""
    counts = counters.counts() if counters is not None and frames > 0 else {}
    layers: dict[str, dict[str, float]] = {}
    work_last = work_mean = total = 0.0
    for name, op in ops.items():
        macs = float(op.macs_per_pixel * op.output_pixels())
        entry: dict[str, float] = {"dense_macs": macs}
        pixels = op.mask_pixels()
        if name in counts and pixels:
            last, overall = counts[name]
            entry["updated_last"] = last / pixels
            entry["updated_mean"] = overall / (pixels * frames)
            if macs:
                work_last += entry["updated_last"] * macs
                work_mean += entry["updated_mean"] * macs
                total += macs
        layers[name] = entry
    return {
        "delta_frames": frames,
        "dense_restarts": counters.restart_count() if counters is not None and frames > 0 else 0,
        "layers": layers,
        "work_fraction_last": work_last / total if total else None,
        "work_fraction_mean": work_mean / total if total else None,
    }
