#!/usr/bin/env python3
"""A long sequence through one delta model: does its error stay flat and finite, and its
memory constant? (issue 11: "a ≥ 3000-frame run with tuned thresholds keeps its error
flat and finite and its memory constant").

    python scripts/long_run.py --data-dir .gpu-data --configs-dir configs   # 3000 frames, 720p, fp16
    python scripts/long_run.py --help

The clip's frames are played forwards, then backwards, and so on (a ping-pong loop: the
sequence never jumps, so what is measured is the drift of one long static-camera
sequence, not a scene cut at the loop point) through one delta model as one sequence,
with statistics on. Every frame: the relative L2 error of the pooled output against the
dense fp32 model (TF32 off) on that frame (as the benchmark's pooled error), and whether
the output is finite. Per window of ``--window`` frames: the mean and max error, the
mean work fraction and, on a GPU, the memory allocated at its end.

Checks (printed last, and in the JSON):

* finite: every output of every frame is finite;
* flat: the mean error over the last full loop period (2L − 2 frames for a clip of L
  frames: every clip frame equally often, so content cannot pass for drift) ≤
  FLAT_FACTOR × the mean over the second (the first holds the frames right after the
  dense first frame, before deferred updates build up); needs ≥ 3 full periods;
* memory constant (GPU): what is allocated at the end exceeds what was allocated at the
  end of the first window by ≤ MEMORY_SLACK_BYTES.

Exits 1 when an output was not finite, else 0 (a failed check is a result to read, as in
the benchmark's verdict).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from deltaconvert.bench.data import (
    clip_path,
    configs_dir,
    decode_rgb,
    default_data_dir,
    parse_resolution,
    to_frames,
)
from deltaconvert.bench.matrix import (
    CONVERT_EXAMPLE,
    ThresholdSetting,
    tuned_configs,
    uniform_setting,
)
from deltaconvert.bench.models import MODELS, build_model
from deltaconvert.bench.runners import PRECISIONS, DeltaRunner, DenseRunner
from deltaconvert.convert import convert
from deltaconvert.files import write_text_atomic
from deltaconvert.metrics import main_output, pooled, relative_error

FLAT_FACTOR = 1.25
MEMORY_SLACK_BYTES = 1 << 20


def loop_period(length: int) -> int:
    """Frames after which the forwards-backwards loop over ``length`` frames repeats."""
    return max(2 * length - 2, 1)


def ping_pong(index: int, length: int) -> int:
    """The clip frame shown at step ``index`` of a forwards-backwards loop over ``length``
    frames (0, 1, …, L−1, L−2, …, 1, 0, 1, …)."""
    period = loop_period(length)
    if period == 1:
        return 0
    k = index % period
    return k if k < length else period - k


def threshold_setting(spec: str, model_name: str, configs: Path | None) -> ThresholdSetting:
    """``tuned`` (the file named after the model, ``MODEL.yaml``), ``tuned:NAME`` (the file
    ``NAME.yaml`` for the model, e.g. ``tuned:mobilenet_v2_fp16``: the benchmark's labels)
    or a uniform threshold τ."""
    if spec.startswith("tuned"):
        label = f"tuned:{model_name}" if spec == "tuned" else spec
        settings = {s.label: s for s in tuned_configs(configs or configs_dir(), model_name)}
        if label not in settings:
            raise SystemExit(f"long_run: no threshold file {label.split(':', 1)[1]}.yaml for "
                             f"{model_name} in {configs or configs_dir()} (found: "
                             f"{', '.join(settings) or 'none'})")
        return settings[label]
    return uniform_setting(float(spec))


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    height, width = parse_resolution(args.resolution)
    rgb = decode_rgb(clip_path(args.clip, args.data_dir), args.clip_frames)
    clip = to_frames(rgb, height, width, device)
    base = build_model(args.model, args.data_dir, [f.cpu() for f in clip[:2]])
    reference = DenseRunner(base, PRECISIONS["fp32"], "eager", device)
    expected = [pooled(main_output(reference(frame)).double()).cpu() for frame in clip]
    del reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = convert(base, torch.zeros(CONVERT_EXAMPLE), backend=args.backend,
                            cuda_graph=args.graph)
    runner = DeltaRunner(converted, PRECISIONS[args.dtype], device, graph=args.graph)
    setting = threshold_setting(args.thresholds, args.model, args.configs_dir)
    runner.configure(setting.label, setting.apply)
    runner.track_stats(True)
    errors: list[float] = []
    works: list[float] = []
    finite = True
    windows = []
    for index in range(args.frames):
        k = ping_pong(index, len(clip))
        out = main_output(runner(clip[k]))
        finite &= bool(torch.isfinite(out).all())
        errors.append(relative_error(pooled(out.double()).cpu(), expected[k]))
        if index:
            works.append(runner.model.stats()["work_fraction_last"])
        if (index + 1) % args.window == 0 or index + 1 == args.frames:
            start = len(windows) * args.window
            window = errors[start:]
            allocated = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                allocated = torch.cuda.memory_allocated(device)
            delta_works = works[max(start - 1, 0):]  # works[i] is frame i + 1's
            windows.append({"frames": [start, index], "error_mean": statistics.fmean(window),
                            "error_max": max(window),
                            "work_mean": statistics.fmean(delta_works) if delta_works else None,
                            "allocated_bytes": allocated})
    return {"model": args.model, "clip": args.clip, "resolution": [height, width],
            "dtype": args.dtype, "graph": args.graph, "backend": runner.model.active_backend,
            "thresholds": setting.label, "frames": args.frames, "clip_frames": len(clip),
            "windows": windows, "checks": checks(errors, loop_period(len(clip)), windows, finite),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


def checks(errors: list[float], period: int, windows: list[dict[str, Any]],
           finite: bool) -> dict[str, Any]:
    """The three checks of the module docstring over the per-frame ``errors`` of a loop
    of ``period`` frames and the ``windows``; a check that needs more frames than ran (or
    a GPU) says so instead of passing."""
    result: dict[str, Any] = {"finite": {"passed": finite}}
    periods = len(errors) // period
    if periods >= 3:
        second = statistics.fmean(errors[period:2 * period])
        last = statistics.fmean(errors[(periods - 1) * period:periods * period])
        drift = last / max(second, 1e-30)
        result["flat"] = {"passed": drift <= FLAT_FACTOR, "last_period_over_second": drift,
                          "period_frames": period}
    else:
        result["flat"] = {"passed": None, "why": f"needs ≥ 3 loop periods of {period} frames"}
    if windows[0]["allocated_bytes"] is not None and len(windows) >= 2:
        growth = windows[-1]["allocated_bytes"] - windows[0]["allocated_bytes"]
        result["memory constant"] = {"passed": growth <= MEMORY_SLACK_BYTES, "growth_bytes": growth}
    else:
        result["memory constant"] = {"passed": None, "why": "needs a GPU and ≥ 2 windows"}
    return result


def print_report(result: dict[str, Any]) -> None:
    print(f"## {result['model']} · {result['clip']} (ping-pong over {result['clip_frames']} frames) · "
          f"{result['resolution'][0]}×{result['resolution'][1]} · {result['dtype']} · "
          f"{'graph' if result['graph'] else 'eager'} · {result['backend']} · {result['thresholds']} · "
          f"{result['frames']} frames · {result['device']}\n")
    print("| frames | pooled err mean | pooled err max | work mean | allocated MiB |\n|---|---|---|---|---|")
    for w in result["windows"]:
        mib = "–" if w["allocated_bytes"] is None else f"{w['allocated_bytes'] / 2**20:.1f}"
        work = "–" if w["work_mean"] is None else f"{w['work_mean']:.3f}"
        print(f"| {w['frames'][0]}–{w['frames'][1]} | {w['error_mean']:.2%} | {w['error_max']:.2%} | "
              f"{work} | {mib} |")
    print()
    for name, check in result["checks"].items():
        verdict = {True: "PASS", False: "FAIL", None: "NOT RUN"}[check["passed"]]
        detail = ", ".join(str(v) if k == "why" else f"{k} {v:.4g}" if isinstance(v, float)
                           else f"{k} {v}" for k, v in check.items() if k != "passed")
        print(f"{name}: {verdict}{f' ({detail})' if detail else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", choices=MODELS)
    parser.add_argument("--clip", default="static", help="static or bigbuckbunny")
    parser.add_argument("--resolution", default="720x1280")
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--window", type=int, default=300, help="frames per row of the table")
    parser.add_argument("--clip-frames", type=int, default=200,
                        help="at most this many clip frames are decoded and looped (fewer if "
                        "the clip is shorter; default 200)")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--thresholds", default="tuned",
                        help="'tuned' (MODEL.yaml), 'tuned:NAME' (NAME.yaml) or τ")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--eager", dest="graph", action="store_false",
                        help="no CUDA-graph replay (default: replay on a GPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--configs-dir", type=Path, help="tuned threshold files (default: installed)")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.window < 1 or args.clip_frames < 1:
        parser.error("--frames, --window and --clip-frames must be ≥ 1")
    if args.device == "cpu":
        args.graph = False
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.backends.cudnn.benchmark = True
    result = run(args)
    print_report(result)
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1))
    return 0 if result["checks"]["finite"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
