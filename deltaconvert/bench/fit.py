"""The cost model of a delta runner: milliseconds per frame as a fixed cost plus a cost
per unit of work, ``ms ≈ a + b·work``.

The points are the runner's warm median ms per frame against its mean work fraction
(``model.stats()["work_fraction_last"]``, multiply-adds a perfect delta kernel does over
the dense ones) at every threshold setting measured on one case (threshold 0, the tuned
files and the uniform sweep). ``a`` and ``b`` are the ordinary least-squares line
through them; :attr:`CostFit.ratio` is the fitted time at work 0.1 over the fitted time
at work 0.9 (the issue-11 target: ≤ 0.3 for mobilenet_v2, i.e. cost that follows the
change), undefined (None) where the line gives no positive time at either: its points
do not describe that range (e.g. a runner whose rows all run dense layers, all at work
near 1, where a steep line through them extrapolates to a negative fixed cost).

The unchanged frame (the same input every frame, work exactly 0) is not a point: a
CUDA-graph replay skips the whole frame when no input pixel changed, so its few µs of
GPU time say nothing about the fixed cost of a frame with any change; as a point it
would pull the intercept down and flatter the ratio. It has a target of its own.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

LOW_WORK, HIGH_WORK = 0.1, 0.9


@dataclass(frozen=True)
class CostFit:
    """``ms ≈ a_ms + b_ms·work`` over ``points`` (work, ms) pairs."""

    a_ms: float
    b_ms: float
    points: int

    def ms(self, work: float) -> float:
        return self.a_ms + self.b_ms * work

    @property
    def ratio(self) -> float | None:
        """Fitted ms at work 0.1 over fitted ms at work 0.9; None where either is not
        positive (see the module docstring)."""
        low, high = self.ms(LOW_WORK), self.ms(HIGH_WORK)
        return low / high if low > 0 and high > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio_low_high": self.ratio}


def fit_cost(points: list[tuple[float, float]]) -> CostFit | None:
    """Least-squares line through ``(work, ms)`` points; None with fewer than two
    distinct work values (no slope to fit)."""
    if len({work for work, _ in points}) < 2:
        return None
    work, ms = np.array(points, dtype=np.float64).T
    b, a = np.polyfit(work, ms, 1)
    return CostFit(float(a), float(b), len(points))


def variant(record: dict[str, Any]) -> str:
    """A delta runner's name without its threshold label, e.g. ``delta fp16 graph``."""
    return f"delta {record['precision']}{' graph' if record.get('mode') == 'graph' else ''}"


def case_fits(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per delta variant of ``case``: the fit (:meth:`CostFit.as_dict`) over its measured
    settings, if at least two distinct work values were measured."""
    points: dict[str, list[tuple[float, float]]] = {}
    for record in case["runners"]:
        if record["kind"] == "delta" and record["status"] == "ok" and record.get("work_fraction") is not None:
            points.setdefault(variant(record), []).append((record["work_fraction"], record["ms_median"]))
    fits = {name: fit_cost(pts) for name, pts in points.items()}
    return {name: fit.as_dict() for name, fit in fits.items() if fit is not None}

