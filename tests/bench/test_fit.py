"""The cost fit ms ≈ a + b·work: exact on a line, least squares otherwise, and per case
over the threshold settings only (the unchanged frame, which a replay skips, is no point)."""
from __future__ import annotations

import numpy as np
import pytest

from deltaconvert.bench.fit import case_fits, fit_cost, variant


def test_fit_recovers_a_line_and_the_ratio():
    fit = fit_cost([(0.0, 1.0), (0.5, 2.4), (1.0, 3.8)])
    assert fit.a_ms == pytest.approx(1.0) and fit.b_ms == pytest.approx(2.8) and fit.points == 3
    assert fit.ratio == pytest.approx((1.0 + 0.28) / (1.0 + 2.52))
    assert fit.as_dict()["ratio_low_high"] == pytest.approx(fit.ratio)


def test_a_line_without_positive_times_has_no_ratio():
    """A steep line through points near work 1 (rows that all run dense layers)
    extrapolates to a negative fixed cost: no ratio, rather than a negative one."""
    falling = fit_cost([(0.94, 0.56), (1.0, 0.62)])  # −0.38 + 1.0·work: −0.28 ms at 0.1
    assert falling.ms(0.1) < 0 and falling.ratio is None
    assert falling.as_dict()["ratio_low_high"] is None


def test_fit_is_least_squares_and_needs_two_distinct_works():
    points = [(0.1, 1.0), (0.2, 1.5), (0.4, 1.9), (0.8, 3.1)]
    b, a = np.polyfit(*np.array(points).T, 1)
    fit = fit_cost(points)
    assert (fit.a_ms, fit.b_ms) == pytest.approx((a, b))
    assert fit_cost([(0.3, 1.0), (0.3, 1.2)]) is None and fit_cost([]) is None


def delta(name, precision, work, ms, mode="graph", status="ok"):
    return {"name": name, "kind": "delta", "precision": precision, "mode": mode, "status": status,
            "work_fraction": work, "ms_median": ms}


def test_case_fits_group_by_variant_and_leave_out_the_unchanged_frame():
    case = {"runners": [
        {"name": "dense fp16 graph", "kind": "dense", "status": "ok", "ms_median": 1.0},
        delta("delta fp16 graph τ=0", "fp16", 0.8, 2.6),
        delta("delta fp16 graph τ=0.1", "fp16", 0.2, 1.4),
        delta("delta fp16 graph τ=0.2", "fp16", 0.1, 9.9, status="failed"),
        delta("delta fp32 graph τ=0", "fp32", 0.8, 3.0),
    ], "unchanged": {"delta fp16 graph": {"statistics off": {"frame_ms": 0.01}},  # off the line
                     "delta fp32 graph": {"error": "RuntimeError: boom"}}}
    fits = case_fits(case)
    assert set(fits) == {"delta fp16 graph"}  # fp32: one work value only
    assert fits["delta fp16 graph"]["points"] == 2
    assert fits["delta fp16 graph"]["a_ms"] == pytest.approx(1.0)
    assert fits["delta fp16 graph"]["b_ms"] == pytest.approx(2.0)
    assert variant({"precision": "fp16", "mode": "eager"}) == "delta fp16"


def test_the_fit_table_shows_a_missing_ratio_as_a_dash():
    from deltaconvert.bench.report import fit_table
    case = {"model": "resnet18", "clip": "static", "resolution": (720, 1280), "frames": 40,
            "fits": {"delta fp16 graph": fit_cost([(0.94, 0.56), (1.0, 0.62)]).as_dict(),
                     "delta fp32 graph": fit_cost([(0.1, 0.5), (0.9, 1.3)]).as_dict()}}
    rows = fit_table({"cases": [case]}).splitlines()[-2:]
    assert rows[0].endswith("| -0.380 | 1.000 | – |") and rows[1].endswith("| 0.38 |")  # 0.5 / 1.3
