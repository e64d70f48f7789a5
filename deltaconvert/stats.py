"""Update statistics of a converted model: per-layer update fractions and the work
fraction (see :meth:`DeltaGraphModule.stats`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import DeltaGraphModule


def collect_stats(model: "DeltaGraphModule") -> dict[str, Any]:
    layers: dict[str, dict[str, float]] = {}
    work_last = work_mean = total = 0.0
    frames = model._delta_frames
    for name, op in model.delta_ops().items():
        fractions = op.update_fraction(frames)
        pixels = op._state.get("out_pixels", 0)
        macs = float(op.macs_per_pixel * pixels)
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
