"""Benchmark results (the dict :func:`deltaconvert.bench.matrix.run` returns) as markdown
tables, checks against the benchmark's performance targets, and PNG plots (matplotlib,
imported only here)."""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from ..files import atomic_writer

BASELINE_ORDER = ("dense fp32 eager", "dense fp32 graph", "dense tf32 eager", "dense tf32 graph",
                  "dense fp16 eager", "dense fp16 graph", "dense fp16 compile")
TARGET_CLIP, TARGET_MODEL, TARGET_ERROR = "static", "mobilenet_v2", 0.02
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
    return f"{case['model']} · {case['clip']} · {height}×{width} · {case['frames']} frames"


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
    return "\n".join(lines)


def _ok(case: dict[str, Any], predicate) -> list[dict[str, Any]]:
    return [r for r in case["runners"] if r["status"] == "ok" and predicate(r)]


def _ms(case: dict[str, Any], name: str) -> float | None:
    found = _ok(case, lambda r: r["name"] == name)
    return found[0]["ms_median"] if found else None


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(target, case, measured, verdict) rows for the performance targets that the run covers
    (none on a CPU: they are defined against CUDA-graph baselines)."""
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
        if case["clip"] == TARGET_CLIP and case["model"] == TARGET_MODEL:
            accurate = _ok(case, lambda r: r["kind"] == "delta" and r["err_pooled_max"] <= TARGET_ERROR)
            for base, need in (("dense fp16 graph", 2.0), ("dense fp16 compile", 2.0)):
                base_ms = _ms(case, base)
                if base_ms is None:
                    continue
                best = min(accurate, key=lambda r: r["ms_median"], default=None)
                speedup = base_ms / best["ms_median"] if best else 0.0
                rows.append((f"pooled err ≤ {TARGET_ERROR:.0%}: ≥ {need}× {base}", where,
                             f"{speedup:.2f}× ({best['name'] if best else 'no run within error'})",
                             "pass" if speedup >= need else "FAIL"))
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The full report: environment, target checks, one table per case."""
    meta = results["meta"]
    out = [f"## Benchmark: {meta['device']}, {meta['date']}", "",
           f"`{meta['command']}` · torch {meta['torch']} · CUDA {meta['cuda']} · "
           f"cuDNN {meta['cudnn']} · deltaconvert {meta['deltaconvert']} · "
           f"backend requested: {meta['backend_requested']} · batch 1", ""]
    rows = targets(results)
    if rows:
        out += ["### Targets", "", "| target | case | measured | verdict |", "|---|---|---|---|"]
        out += [f"| {t} | {c} | {m} | {v} |" for t, c, m, v in rows]
        out.append("")
    for case in results["cases"]:
        out += [case_table(case), ""]
    return "\n".join(out)


def _slug(case: dict[str, Any]) -> str:
    height, width = case["resolution"]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{case['model']}_{case['clip']}_{height}x{width}")


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
