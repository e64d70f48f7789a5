"""Benchmark results (the dict :func:`deltaconvert.bench.matrix.run` returns) as markdown
tables (per case; streams, unchanged frame, cost fit; earlier performance targets; the
issue-11 verdict last), and PNG plots (matplotlib, imported only here)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..files import atomic_writer

BASELINE_ORDER = ("dense fp32 eager", "dense fp32 graph", "dense tf32 eager", "dense tf32 graph",
                  "dense fp16 eager", "dense fp16 graph", "dense fp16 compile")
EFFICIENCY_BASELINE = "dense fp16 graph"


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _mib(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.0f}"


def _case_title(case: dict[str, Any]) -> str:
    height, width = case["resolution"]
    streams = case.get("streams", 1)
    batch = f" · {streams} streams" if streams > 1 else ""
    return f"{case['model']} · {case['clip']} · {height}×{width}{batch} · {case['frames']} frames"


def case_table(case: dict[str, Any]) -> str:
    """One row per runner: time, speedups, errors, work, efficiency, memory, launches."""
    present = {r["name"] for r in case["runners"] if r["status"] == "ok" and r["kind"] == "dense"}
    baselines = [b for b in BASELINE_ORDER if b in present]
    short = [b.removeprefix("dense ") for b in baselines]
    header = (["runner", "backend", "ms/frame", "frame 0 ms"] + [f"× {s}" for s in short] +
              ["out err mean/max", "pooled err mean/max", "work", "eff.", "peak MiB alloc/resv",
               "kernels/frame", "launches/frame"])
    lines = [f"### {_case_title(case)}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for r in case["runners"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']}: {r.get('error') or ''} |")
            continue
        row = [r["name"], r.get("backend") or "torch", _num(r["ms_median"], 3), _num(r["first_frame_ms"], 2)]
        row += [_num(r["speedup"].get(b)) for b in baselines]
        row += [f"{_pct(r['err_output_mean'])} / {_pct(r['err_output_max'])}",
                f"{_pct(r['err_pooled_mean'])} / {_pct(r['err_pooled_max'])}",
                _num(r.get("work_fraction"), 3), _num(r.get("efficiency")),
                f"{_mib(r.get('peak_allocated_bytes'))} / {_mib(r.get('peak_reserved_bytes'))}",
                _num(r.get("kernels_per_frame"), 0), _num(r.get("launch_calls_per_frame"), 0)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(f"Speedup = baseline ms / runner ms; efficiency = ms / ({case['efficiency_baseline']} ms "
                 "× work); errors are relative L2 against dense fp32 eager.")
    criterion = case.get("criterion")
    if criterion:
        chosen = ", ".join(f"{p}: {name or 'none'}" for p, name in criterion["selected"].items())
        lines.append(f"Criterion: pooled err ≤ {_pct(criterion['bound'])} (max of 2 % and dense fp16's "
                     f"{_pct(criterion['dense_fp16_err_pooled'])}); fastest within it: {chosen}.")
    return "\n".join(lines)


def _ok(case: dict[str, Any], predicate) -> list[dict[str, Any]]:
    return [r for r in case["runners"] if r["status"] == "ok" and predicate(r)]


def _ms(case: dict[str, Any], name: str) -> float | None:
    found = _ok(case, lambda r: r["name"] == name)
    return found[0]["ms_median"] if found else None


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, case, measured, verdict) rows for the earlier performance targets that the
    run covers (none on a CPU: they are defined against CUDA-graph baselines); issue 11's
    are :mod:`deltaconvert.bench.verdict`'s."""
    rows = []
    for case in results["cases"]:
        if case["efficiency_baseline"] != EFFICIENCY_BASELINE:
            continue
        where = _case_title(case)
        fp32_graph = _ms(case, "dense fp32 graph")
        limit = 1.3 if case["clip"] == "scenecut" else 1.15
        for r in _ok(case, lambda r: r["kind"] == "delta" and r.get("thresholds") == "τ=0"
                     and r["precision"] == "fp32"):
            if fp32_graph:
                ratio = r["ms_median"] / fp32_graph
                rows.append((f"τ=0 ≤ {limit}× dense fp32 graph", f"{where} · {r['name']}",
                             f"{ratio:.2f}×", "pass" if ratio <= limit else "FAIL"))
        for r in _ok(case, lambda r: r["kind"] == "delta" and (r.get("work_fraction") or 0) >= 0.1
                     and r.get("efficiency") is not None):
            rows.append(("efficiency ≤ 2 where work ≥ 0.1", f"{where} · {r['name']}",
                         f"{r['efficiency']:.2f} (work {r['work_fraction']:.2f})",
                         "pass" if r["efficiency"] <= 2 else "FAIL"))
    return rows


def streams_table(results: dict[str, Any]) -> str | None:
    """Per model, clip and resolution run with more than one stream: dense fp16 graph and
    every delta run at each number of streams N (None if no case had more than one)."""
    multi = {(c["model"], c["clip"], tuple(c["resolution"])) for c in results["cases"] if c.get("streams", 1) > 1}
    if not multi:
        return None
    lines = ["### Streams: N independent streams in one batch", "",
             "| case | N | runner | ms/batch | frames/s | × dense fp16 graph | pooled err | within | "
             "peak MiB/stream alloc/resv | state MiB/stream |", "|---|---|---|---|---|---|---|---|---|---|"]
    for case in results["cases"]:
        if (case["model"], case["clip"], tuple(case["resolution"])) not in multi:
            continue
        bound = case["criterion"]["bound"]
        where = f"{case['model']} · {case['clip']} · {case['resolution'][0]}×{case['resolution'][1]}"
        for r in _ok(case, lambda r: r["kind"] == "delta" or r["name"] == "dense fp16 graph"):
            lines.append(
                f"| {where} | {case.get('streams', 1)} | {r['name']} | {_num(r['ms_median'], 3)} | "
                f"{_num(r['frames_per_s'], 0)} | {_num(r['speedup'].get('dense fp16 graph'))} | "
                f"{_pct(r['err_pooled_mean'])} | {'yes' if r['err_pooled_mean'] <= bound else 'no'} | "
                f"{_mib(r.get('peak_allocated_per_stream'))} / {_mib(r.get('peak_reserved_per_stream'))} | "
                f"{_mib(r.get('state_bytes_per_stream'))} |")
    lines += ["", "frames/s counts the frames of all streams; memory is the peak beyond the harness "
              "divided by N; within: pooled err within the case's criterion."]
    return "\n".join(lines)


def unchanged_table(results: dict[str, Any]) -> str | None:
    """The unchanged frame of every delta variant measured (see deltaconvert.bench.unchanged)."""
    rows = [(case, name, entry) for case in results["cases"]
            for name, entry in case.get("unchanged", {}).items()]
    if not rows:
        return None
    lines = ["### Unchanged frame: the same input every call, measured around the model call", "",
             "| case | runner | thresholds | statistics | wall ms (synced) | host ms | frame ms | calls |",
             "|---|---|---|---|---|---|---|---|"]
    for case, name, entry in rows:
        if "error" in entry:
            lines.append(f"| {_case_title(case)} | {name} | failed: {entry['error']} |")
            continue
        for label in ("statistics on", "statistics off"):
            m = entry[label]
            lines.append(f"| {_case_title(case)} | {name} | {entry['thresholds']} | {label.split()[1]} | "
                         f"{_num(m['wall_ms'], 3)} | {_num(m['host_ms'], 3)} | {_num(m['frame_ms'], 3)} | "
                         f"{m['calls']} |")
    lines += ["", "wall: host time of one call with a device synchronisation before and after; host: "
              "time for the call to return, no synchronisation; frame: as ms/frame everywhere (CUDA "
              "events around each call, pipelined)."]
    return "\n".join(lines)


def fit_table(results: dict[str, Any]) -> str | None:
    """The cost fit of every delta variant (see deltaconvert.bench.fit)."""
    rows = [(case, name, fit) for case in results["cases"] for name, fit in case.get("fits", {}).items()]
    if not rows:
        return None
    lines = ["### Cost per frame: ms ≈ a + b·work (least squares over the threshold settings; the "
             "unchanged frame, which a replay skips, is not a point)", "",
             "| case | runner | points | a: fixed ms | b: ms per unit of work | time(0.1) / time(0.9) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {_case_title(case)} | {name} | {fit['points']} | {fit['a_ms']:.3f} | {fit['b_ms']:.3f} | "
              f"{_ratio(fit['ratio_low_high'])} |" for case, name, fit in rows]
    return "\n".join(lines)


def _ratio(ratio: float | None) -> str:
    """A fit's time ratio, or "–" where the fitted line gives no positive time."""
    return "–" if ratio is None else f"{ratio:.2f}"


def verdict_table(rows: list[dict[str, str]]) -> str:
    """The issue-11 verdict (rows of :func:`deltaconvert.bench.verdict.verdict`)."""
    lines = ["### Verdict: issue 11 targets", "", "| target | case | measured | threshold | verdict |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['case']} | {r['measured']} | {r['threshold']} | {r['verdict']} |"
              for r in rows]
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The full report: environment, earlier target checks, one table per case, the
    streams, unchanged-frame and cost-fit tables, and the issue-11 verdict last."""
    meta = results["meta"]
    out = [f"## Benchmark: {meta['device']}, {meta['date']}", "",
           f"`{meta['command']}` · torch {meta['torch']} · CUDA {meta['cuda']} · "
           f"cuDNN {meta['cudnn']} · deltaconvert {meta['deltaconvert']} · "
           f"backend requested: {meta['backend_requested']}"
           + "".join(f" · {k}={v}" for k, v in meta.get("switches", {}).items()), ""]
    rows = targets(results)
    if rows:
        out += ["### Earlier targets", "", "| target | case | measured | verdict |", "|---|---|---|---|"]
        out += [f"| {t} | {c} | {m} | {v} |" for t, c, m, v in rows]
        out.append("")
    for case in results["cases"]:
        out += [case_table(case), ""]
    for table in (streams_table(results), unchanged_table(results), fit_table(results)):
        if table:
            out += [table, ""]
    if "verdict" in results:
        out.append(verdict_table(results["verdict"]))
    return "\n".join(out)


def _slug(case: dict[str, Any]) -> str:
    height, width = case["resolution"]
    streams = case.get("streams", 1)
    batch = f"_{streams}streams" if streams > 1 else ""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{case['model']}_{case['clip']}_{height}x{width}{batch}")


def _save(fig: Any, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically."""
    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)


def write_plots(results: dict[str, Any], out_dir: Path) -> list[Path] | None:
    """Per case: ms per frame along the clip with the work fraction below it, and
    ms per frame against pooled error. Each PNG is written atomically; None if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    written = []
    for case in results["cases"]:
        ok = [r for r in case["runners"] if r["status"] == "ok"]
        dense = [r for r in ok if r["kind"] == "dense" and r.get("mode") != "eager"] or \
            [r for r in ok if r["kind"] == "dense"]
        delta = [r for r in ok if r["kind"] == "delta"]
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 1]})
        for r in dense:
            top.plot(r["ms_per_frame"], linestyle="--", linewidth=1, label=r["name"])
        colours = plt.get_cmap("tab20")
        for index, r in enumerate(delta):
            line, = top.plot(r["ms_per_frame"], linewidth=1.2, label=r["name"], color=colours(index % 20))
            work = [math.nan if w is None else w for w in r["work_fraction_per_frame"]]
            bottom.plot(work, color=line.get_color(), linewidth=1)
        top.set_yscale("log")
        top.set_ylabel("ms per frame")
        top.set_title(_case_title(case))
        top.legend(fontsize=6, ncol=2)
        bottom.set_ylabel("work fraction")
        bottom.set_xlabel("frame")
        bottom.set_ylim(0, 1.05)
        path = out_dir / f"{_slug(case)}_clip.png"
        fig.tight_layout()
        _save(fig, path)
        plt.close(fig)
        written.append(path)

        fig, ax = plt.subplots(figsize=(7, 5))
        for r in delta:
            ax.scatter(max(r["err_pooled_mean"], 1e-7), r["ms_median"], s=18)
            ax.annotate(r["name"].removeprefix("delta "), (max(r["err_pooled_mean"], 1e-7), r["ms_median"]),
                        fontsize=6)
        for r in dense:
            ax.axhline(r["ms_median"], linestyle="--", linewidth=0.8, color="grey")
            ax.text(0.01, r["ms_median"], r["name"], transform=ax.get_yaxis_transform(),
                    fontsize=6, color="grey", va="bottom")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pooled-output relative error (mean over frames)")
        ax.set_ylabel("median ms per frame")
        ax.set_title(_case_title(case))
        path = out_dir / f"{_slug(case)}_speed_error.png"
        fig.tight_layout()
        _save(fig, path)
        plt.close(fig)
        written.append(path)
    return written
