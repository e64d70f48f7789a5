"""Update statistics of a converted model: per-layer update fractions and the work
fraction (see :meth:`DeltaGraphModule.stats`)."""
from __future__ import annotations

from typing import Any, Mapping

from .ops.base import DeltaOp


def collect_stats(ops: Mapping[str, DeltaOp], frames: int) -> dict[str, Any]:
    """Statistics of ``ops`` (by name, in graph order) after ``frames`` delta frames with
    statistics on; see :meth:`DeltaGraphModule.stats` for the keys."""
    layers: dict[str, dict[str, float]] = {}
    work_last = work_mean = total = 0.0
    for name, op in ops.items():
        fractions = op.update_fraction(frames)
        macs = float(op.macs_per_pixel * op.output_pixels())
        entry: dict[str, float] = {"dense_macs": macs}
        if fractions is not None:
            entry["updated_last"], entry["updated_mean"] = fractions
            if macs:
                work_last += fractions[0] * macs
                work_mean += fractions[1] * macs
                total += macs
        layers[name] = entry
    return {
        "delta_frames": frames,
        "layers": layers,
        "work_fraction_last": work_last / total if total else None,
        "work_fraction_mean": work_mean / total if total else None,
    }
