"""The accuracy criterion (pooled error ≤ max(2 %, dense fp16's own)), the run it
selects, and the issue-11 verdict: PASS, FAIL, and NOT RUN for whatever did not run."""
from __future__ import annotations

import copy

import pytest

from deltaconvert.bench import criterion
from deltaconvert.bench.verdict import FAIL, NOT_RUN, PASS, TARGETS, verdict

HD = [720, 1280]


def dense(name, ms, err=0.0):
    return {"name": name, "kind": "dense", "status": "ok", "ms_median": ms, "err_pooled_mean": err}


def delta(label, ms, err, precision="fp16", **extra):
    return {"name": f"delta {precision} graph {label}", "kind": "delta", "precision": precision,
            "mode": "graph", "thresholds": label, "status": "ok", "ms_median": ms,
            "err_pooled_mean": err, **extra}


def case(model, clip="static", streams=1, runners=(), **extra):
    return {"model": model, "clip": clip, "resolution": HD, "streams": streams,
            "runners": list(runners), **extra}


def test_the_bound_is_dense_fp16_error_or_two_percent():
    loose = case("m", runners=[dense("dense fp16 graph", 1.0, err=0.033)])
    assert criterion.error_bound(loose) == pytest.approx(0.033)
    tight = case("m", runners=[dense("dense fp16 graph", 1.0, err=0.004)])
    assert criterion.error_bound(tight) == criterion.ERROR_FLOOR
    assert criterion.error_bound(case("m")) == criterion.ERROR_FLOOR  # no dense fp16 run


def test_select_takes_the_fastest_run_within_the_bound():
    runs = [dense("dense fp16 graph", 1.0, err=0.03), delta("τ=0", 2.0, 0.02), delta("τ=0.02", 1.2, 0.029),
            delta("τ=0.1", 0.5, 0.06), delta("τ=0", 0.4, 0.001, precision="fp32"),
            {**delta("τ=0.05", 0.1, 0.0), "status": "failed"}]
    chosen = criterion.select(case("m", runners=runs), "fp16")
    assert chosen["thresholds"] == "τ=0.02"
    assert criterion.select(case("m", runners=runs), "tf32") is None
    summary = criterion.criterion_summary(case("m", runners=runs), ["fp16"])
    assert summary["selected"] == {"fp16": "delta fp16 graph τ=0.02"}
    assert summary["selected_thresholds"] == {"fp16": "τ=0.02"} and summary["bound"] == 0.03


def unchanged(wall_on):
    on = {"wall_ms": wall_on, "host_ms": 0.05, "frame_ms": 0.05, "calls": 50}
    return {"delta fp16 graph": {"thresholds": "τ=0", "statistics on": on, "statistics off": dict(on)}}


def passing_results():
    """Every target's case, each meeting its target."""
    memory = {"peak_reserved_per_stream": 0.5e9, "peak_allocated_per_stream": 0.4e9,
              "state_bytes_per_stream": 0.3e9}
    mnv2 = case("mobilenet_v2", runners=[dense("dense fp16 graph", 1.0, 0.033), dense("dense fp16 compile", 0.7),
                                         delta("τ=0", 0.6, 0.05), delta("τ=0.02", 0.4, 0.03)],
                unchanged=unchanged(0.08),
                fits={"delta fp16 graph": {"a_ms": 0.05, "b_ms": 0.6, "points": 5, "ratio_low_high": 0.2}})
    streams = case("mobilenet_v2", streams=32, runners=[dense("dense fp16 graph", 20.0, 0.03),
                                                       delta("τ=0.02", 9.0, 0.03, **memory)])
    others = [case(m, runners=[dense("dense fp16 graph", 3.0, 0.01), delta("τ=0.01", 1.8, 0.02)])
              for m in ("resnet18", "resnet50", "lraspp_mobilenet_v3_large")]
    cut = case("mobilenet_v2", clip="scenecut", runners=[dense("dense fp16 graph", 1.0), delta("τ=0", 1.2, 0.0)])
    return {"cases": [mnv2, streams, *others, cut]}


def test_every_target_passes_when_met():
    rows = verdict(passing_results())
    assert len(rows) == len(TARGETS)
    assert [r["verdict"] for r in rows] == [PASS] * len(TARGETS), rows
    assert rows[0]["measured"].startswith("2.50× (delta fp16 graph τ=0.02 0.400 ms vs 1.000 ms")
    assert "frames/s" in rows[2]["measured"]


def test_targets_fail_on_slow_inaccurate_or_large_runs():
    results = passing_results()
    mnv2, streams, resnet18, _, _, cut = results["cases"]
    mnv2["runners"][3]["err_pooled_mean"] = 0.04  # τ=0.02 leaves the criterion: τ=0 is too
    streams["runners"][1]["peak_reserved_per_stream"] = 0.7e9
    resnet18["runners"][1]["ms_median"] = 2.5
    mnv2["unchanged"]["delta fp16 graph"]["statistics on"]["wall_ms"] = 0.3
    mnv2["fits"]["delta fp16 graph"]["ratio_low_high"] = 0.5
    cut["runners"][1]["ms_median"] = 1.5
    by_target = {r["target"]: r for r in verdict(results)}
    failed = {t for t, r in by_target.items() if r["verdict"] == FAIL}
    assert len(failed) == 7 and all(r["verdict"] == PASS for t, r in by_target.items() if t not in failed)
    batch1 = next(r for t, r in by_target.items() if "batch 1: ≥ 2×" in t and "mobilenet_v2" in t)
    assert batch1["measured"].startswith("no delta fp16 run within pooled error 3.30%")


def test_a_cost_fit_without_a_ratio_fails_and_says_why():
    results = passing_results()
    fit = results["cases"][0]["fits"]["delta fp16 graph"]
    fit.update(a_ms=-0.2, b_ms=0.8, ratio_low_high=None)
    row = next(r for r in verdict(results) if "time at work 0.1" in r["target"])
    assert row["verdict"] == FAIL
    assert row["measured"].startswith("no ratio: the fitted time is not positive at work 0.1 or 0.9")


def test_what_did_not_run_is_never_a_pass():
    assert {r["verdict"] for r in verdict({"cases": []})} == {NOT_RUN}
    results = passing_results()
    mnv2 = results["cases"][0]
    del mnv2["runners"][1]  # no torch.compile baseline
    mnv2["unchanged"] = {"delta fp16 graph": {"error": "RuntimeError: boom"}}
    mnv2["fits"] = {}
    results["cases"][1]["runners"][1].update(peak_reserved_per_stream=None)  # a CPU run
    for other in results["cases"][2:5]:
        other["runners"] = [r for r in other["runners"] if r["kind"] == "dense"]
    results["cases"][5]["resolution"] = [32, 48]  # the scene cut at another size
    rows = verdict(results)
    assert [r["verdict"] for r in rows] == [PASS, NOT_RUN, PASS] + [NOT_RUN] * 7, rows
    measured = [r["measured"] for r in rows]
    assert measured[1] == "dense fp16 compile not run" and measured[3] == "no GPU memory measured"
    assert measured[4] == "no delta fp16 run" and "boom" in measured[7]
    assert measured[8] == "no cost fit measured for delta fp16" and measured[9] == "case not run"


def test_the_scene_cut_is_judged_for_every_model_it_ran_for():
    results = passing_results()
    slow = copy.deepcopy(results["cases"][5])
    slow["model"], slow["runners"][1]["ms_median"] = "resnet18", 2.0
    results["cases"].append(slow)
    rows = [r for r in verdict(results) if r["target"].startswith("scene cut")]
    assert [(r["case"], r["verdict"]) for r in rows] == [("mobilenet_v2", PASS), ("resnet18", FAIL)]
