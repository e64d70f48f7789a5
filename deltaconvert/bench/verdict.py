"""The verdict on the targets of issue 11: one row per target, each with the measured
values, the threshold and PASS, FAIL or NOT RUN.

Every target names the case it is judged on (model, clip, resolution, streams; the scene
cut is judged on every model it ran for) and compares delta fp16 runs with dense fp16 in
the same case, so both saw the same frames in the same process. "Within the criterion"
is :mod:`deltaconvert.bench.criterion`; the run judged is the fastest delta fp16 run
within it (:func:`~deltaconvert.bench.criterion.select`). A target whose case, baseline
or measurement is missing from the run is NOT RUN, never PASS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .criterion import DENSE_FP16, error_bound, select
from .fit import HIGH_WORK, LOW_WORK

PRECISION = "fp16"
HD = (720, 1280)
GB = 1e9
PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"


class NotRun(Exception):
    """The case ran, but not what the target needs (the message says what)."""


@dataclass(frozen=True)
class Target:
    """A target: its wording, the threshold as text, the cases it is judged on
    (``model`` None: every model), and ``check(case) → (measured text, passed)``."""

    name: str
    threshold: str
    model: str | None
    clip: str
    streams: int
    check: Callable[[dict[str, Any]], tuple[str, bool]]

    def applies_to(self, case: dict[str, Any]) -> bool:
        return ((self.model is None or case["model"] == self.model) and case["clip"] == self.clip
                and tuple(case["resolution"]) == HD and case.get("streams", 1) == self.streams)


def _baseline_ms(case: dict[str, Any], name: str) -> float:
    found = [r["ms_median"] for r in case["runners"] if r["status"] == "ok" and r["name"] == name]
    if not found:
        raise NotRun(f"{name} not run")
    return found[0]


def _delta_runs(case: dict[str, Any]) -> list[dict[str, Any]]:
    runs = [r for r in case["runners"] if r["status"] == "ok" and r["kind"] == "delta"
            and r["precision"] == PRECISION]
    if not runs:
        raise NotRun(f"no delta {PRECISION} run")
    return runs


def speedup(baseline: str, need: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    """The fastest delta fp16 run within the criterion is ≥ ``need``× faster than
    ``baseline`` (ms per batch; with N streams that is the throughput ratio)."""
    def check(case: dict[str, Any]) -> tuple[str, bool]:
        base = _baseline_ms(case, baseline)
        _delta_runs(case)
        best, bound = select(case, PRECISION), error_bound(case)
        if best is None:
            return f"no delta {PRECISION} run within pooled error {bound:.2%}", False
        ratio = base / best["ms_median"]
        streams = case.get("streams", 1)
        rate = (f", {1e3 * streams / best['ms_median']:.0f} vs {1e3 * streams / base:.0f} frames/s"
                if streams > 1 else "")
        return (f"{ratio:.2f}× ({best['name']} {best['ms_median']:.3f} ms vs {base:.3f} ms{rate}; "
                f"pooled err {best['err_pooled_mean']:.2%} ≤ {bound:.2%})", ratio >= need)
    return check


def memory_per_stream(limit_gb: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    """The largest peak memory reserved per stream beyond the harness over the case's
    delta fp16 runs (every threshold setting) is ≤ ``limit_gb``."""
    def check(case: dict[str, Any]) -> tuple[str, bool]:
        runs = [r for r in _delta_runs(case) if r.get("peak_reserved_per_stream") is not None]
        if not runs:
            raise NotRun("no GPU memory measured")
        worst = max(runs, key=lambda r: r["peak_reserved_per_stream"])
        reserved = worst["peak_reserved_per_stream"] / GB
        return (f"{reserved:.2f} GB reserved per stream ({worst['name']}; allocated "
                f"{worst['peak_allocated_per_stream'] / GB:.2f} GB, state "
                f"{worst['state_bytes_per_stream'] / GB:.2f} GB)", reserved <= limit_gb)
    return check


def _variant_entry(table: dict[str, Any], what: str) -> tuple[str, Any]:
    """The delta fp16 entry of a per-variant table, the CUDA-graph variant first."""
    for name in (f"delta {PRECISION} graph", f"delta {PRECISION}"):
        if name in table:
            return name, table[name]
    raise NotRun(f"no {what} measured for delta {PRECISION}")


def unchanged_ms(limit: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    """An unchanged frame with statistics on (the default) takes ≤ ``limit`` ms of host
    wall time around the call, synchronised (:mod:`deltaconvert.bench.unchanged`)."""
    def check(case: dict[str, Any]) -> tuple[str, bool]:
        name, entry = _variant_entry(case.get("unchanged", {}), "unchanged frame")
        if "error" in entry:
            raise NotRun(f"unchanged frame failed: {entry['error']}")
        on, off = entry["statistics on"], entry["statistics off"]
        return (f"{on['wall_ms']:.3f} ms wall ({name}; host {on['host_ms']:.3f}, frame "
                f"{on['frame_ms']:.3f}; statistics off: wall {off['wall_ms']:.3f}, host "
                f"{off['host_ms']:.3f}, frame {off['frame_ms']:.3f})", on["wall_ms"] <= limit)
    return check


def cost_ratio(limit: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    """The fitted time at work 0.1 over that at work 0.9 (:mod:`deltaconvert.bench.fit`)
    is ≤ ``limit``; a fit without that ratio (no positive fitted time at one of them)
    shows nothing, so it fails."""
    def check(case: dict[str, Any]) -> tuple[str, bool]:
        name, fit = _variant_entry(case.get("fits", {}), "cost fit")
        ratio = fit["ratio_low_high"]
        line = f"{name}: ms ≈ {fit['a_ms']:.3f} + {fit['b_ms']:.3f}·work over {fit['points']} points"
        if ratio is None:
            return f"no ratio: the fitted time is not positive at work {LOW_WORK} or {HIGH_WORK} ({line})", False
        return f"{ratio:.2f} ({line})", ratio <= limit
    return check


def scene_cut(limit: float) -> Callable[[dict[str, Any]], tuple[str, bool]]:
    """The fastest delta fp16 run on the scene cut (threshold 0: every pixel changes
    every frame) takes ≤ ``limit``× dense fp16 graph."""
    def check(case: dict[str, Any]) -> tuple[str, bool]:
        base = _baseline_ms(case, DENSE_FP16)
        best = min(_delta_runs(case), key=lambda r: r["ms_median"])
        ratio = best["ms_median"] / base
        return f"{ratio:.2f}× ({best['name']} {best['ms_median']:.3f} ms vs {base:.3f} ms)", ratio <= limit
    return check


MNV2 = "mobilenet_v2"
TARGETS = [
    Target("mobilenet_v2 static 720p batch 1: ≥ 2× dense fp16 graph within the criterion",
           "≥ 2.00×", MNV2, "static", 1, speedup(DENSE_FP16, 2.0)),
    Target("mobilenet_v2 static 720p batch 1: ≥ 1.3× fp16 torch.compile within the criterion",
           "≥ 1.30×", MNV2, "static", 1, speedup("dense fp16 compile", 1.3)),
    Target("mobilenet_v2 static 720p, 32 streams: throughput ≥ 2× dense fp16 graph at batch 32 "
           "within the criterion", "≥ 2.00×", MNV2, "static", 32, speedup(DENSE_FP16, 2.0)),
    Target("mobilenet_v2 static 720p, 32 streams: peak memory per stream",
           "≤ 0.60 GB", MNV2, "static", 32, memory_per_stream(0.6)),
    *(Target(f"{model} static 720p batch 1: ≥ 1.5× dense fp16 graph within the criterion",
             "≥ 1.50×", model, "static", 1, speedup(DENSE_FP16, 1.5))
      for model in ("resnet18", "resnet50", "lraspp_mobilenet_v3_large")),
    Target("unchanged frame, statistics on (mobilenet_v2 static 720p)", "≤ 0.100 ms",
           MNV2, "static", 1, unchanged_ms(0.1)),
    Target(f"mobilenet_v2: time at work {LOW_WORK} ≤ 0.3 × time at work {HIGH_WORK}", "≤ 0.30",
           MNV2, "static", 1, cost_ratio(0.3)),
    Target("scene cut 720p: ≤ 1.3× dense fp16 graph", "≤ 1.30×", None, "scenecut", 1, scene_cut(1.3)),
]


def verdict(results: dict[str, Any], targets: list[Target] = TARGETS) -> list[dict[str, str]]:
    """One row per target and case it applies to (one NOT RUN row where none ran):
    ``target``, ``case``, ``measured``, ``threshold``, ``verdict``."""
    rows = []
    for target in targets:
        cases = [c for c in results["cases"] if target.applies_to(c)]
        if not cases:
            rows.append({"target": target.name, "case": "–", "measured": "case not run",
                         "threshold": target.threshold, "verdict": NOT_RUN})
        for case in cases:
            try:
                measured, passed = target.check(case)
                outcome = PASS if passed else FAIL
            except NotRun as reason:
                measured, outcome = str(reason), NOT_RUN
            rows.append({"target": target.name, "case": case["model"], "measured": measured,
                         "threshold": target.threshold, "verdict": outcome})
    return rows
