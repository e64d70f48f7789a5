"""The accuracy criterion of issue 11, and the delta run it selects per case.

A delta run is *within the criterion* when its pooled error (relative L2 of the
spatially pooled main output against dense fp32 eager, mean over frames 1 …) is at most
``max(2 %, dense fp16's own pooled error)``, the latter measured the same way on the
same frames for the dense fp16 CUDA-graph baseline: dense fp16 is what a user would
otherwise run. Without a dense fp16 run in the case the bound is 2 %.

:func:`select` picks, per case and delta precision, the fastest run (lowest median ms
per frame) within the criterion.
"""
from __future__ import annotations

from typing import Any

ERROR_FLOOR = 0.02
DENSE_FP16 = "dense fp16 graph"
ERROR_KEY = "err_pooled_mean"


def _ok(case: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in case["runners"] if r["status"] == "ok"]


def dense_fp16_error(case: dict[str, Any]) -> float | None:
    """The pooled error of the case's dense fp16 CUDA-graph baseline (None if not run)."""
    found = [r[ERROR_KEY] for r in _ok(case) if r["name"] == DENSE_FP16]
    return found[0] if found else None


def error_bound(case: dict[str, Any]) -> float:
    """``max(2 %, dense fp16's pooled error)`` for ``case``."""
    return max(ERROR_FLOOR, dense_fp16_error(case) or 0.0)


def within(record: dict[str, Any], bound: float) -> bool:
    return record["status"] == "ok" and record[ERROR_KEY] <= bound


def select(case: dict[str, Any], precision: str) -> dict[str, Any] | None:
    """The fastest delta run of ``precision`` within the criterion, or None."""
    bound = error_bound(case)
    candidates = [r for r in _ok(case) if r["kind"] == "delta" and r["precision"] == precision
                  and within(r, bound)]
    return min(candidates, key=lambda r: r["ms_median"], default=None)


def criterion_summary(case: dict[str, Any], precisions: list[str]) -> dict[str, Any]:
    """What the case's JSON records: the bound, dense fp16's error, and per precision the
    name of the selected run (None if no run meets the bound)."""
    selected = {p: select(case, p) for p in precisions}
    return {"bound": error_bound(case), "dense_fp16_err_pooled": dense_fp16_error(case),
            "selected": {p: (r["name"] if r else None) for p, r in selected.items()},
            "selected_thresholds": {p: (r["thresholds"] if r else None) for p, r in selected.items()}}
