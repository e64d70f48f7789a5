"""The delta-inference benchmark (``deltaconvert bench``): delta models against the best
dense inference, all measured in one process on the same frames.

For every model × clip × resolution ("case"), batch 1:

* dense baselines, each a copy of the model with channels_last parameters and
  ``cudnn.benchmark`` on: fp32 (TF32 off), TF32 and fp16, each eager and replayed from
  a CUDA graph, and fp16 ``torch.compile(mode="reduce-overhead")`` (``--no-compile``:
  without it);
* the delta model (``deltaconvert.convert``, the backend given by ``--backend``) in each
  ``--delta-precisions``, at threshold 0, with the tuned thresholds shipped with the
  package (``deltaconvert.configs``, or ``--configs-dir``) for that architecture, and over a sweep of uniform thresholds
  (every truncating layer and the input Sparsify at τ), replayed from a CUDA graph
  (``convert(..., cuda_graph=True)``) on a GPU, eagerly on a CPU (``--delta-modes``).

Per runner: median ms per frame over the warm frames (frames ``1 + warmup`` …; frame 0
is a delta model's dense first frame, reported apart), speedup over every baseline
(baseline ms / runner ms), relative L2 error of the output and of its spatially pooled
form against dense fp32 eager (mean and max over frames 1 …), the work fraction (mean of
``model.stats()["work_fraction_last"]`` over the warm frames), the efficiency
``ms / (efficiency-baseline ms × work fraction)`` with the dense fp16 CUDA-graph
baseline (the fastest dense baseline measured where that one cannot run, e.g. on a CPU),
per-layer update fractions, peak GPU memory (allocated and reserved) beyond the harness,
and kernels and launch calls per frame. See :mod:`deltaconvert.bench.runners` for how each is measured.

The ``scenecut`` clip is the static clip with every pixel changing at every frame; only
threshold 0 runs on it (the target: at most 1.3× dense fp32 CUDA graph).

Without ``--models``, ``--clips``, ``--resolutions`` or ``--quick`` the cases are the
default matrix: every model on the static clip, bigbuckbunny and the scene cut at
720×1280, and mobilenet_v2 on the static clip and bigbuckbunny at 1080×1920 and 224 high
(:data:`MATRIX`); with any of them, every combination of the given (or default) models,
clips and resolutions. Clips and weights come from :mod:`deltaconvert.bench.data` (the
static clip is generated into the data folder on first use).

    deltaconvert bench --quick                 # a few minutes on a GPU
    deltaconvert bench                         # the matrix (about 9 minutes on an H200)
    deltaconvert bench --device cpu --resolutions 32x48 --frames 6 --models mobilenet_v2
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..convert import convert
from ..files import write_text_atomic
from ..thresholds import ThresholdConfig, load_thresholds
from ..version import __version__
from .data import (
    CLIPS,
    clip_path,
    configs_dir,
    decode_rgb,
    default_data_dir,
    parse_resolution,
    scene_cut_frames,
    to_frames,
)
from .models import MODELS, build_model
from .report import EFFICIENCY_BASELINE, markdown, write_plots
from .runners import (
    PRECISIONS,
    DeltaRunner,
    DenseRunner,
    Memory,
    Precision,
    Reference,
    Runner,
    accuracy_pass,
    count_launches,
    memory_now,
    timed_pass,
)

SCENE_CUT = "scenecut"
BASELINE_MODES = (("fp32", "eager"), ("fp32", "graph"), ("tf32", "eager"), ("tf32", "graph"),
                  ("fp16", "eager"), ("fp16", "graph"))
CONVERT_EXAMPLE = (1, 3, 64, 64)  # conversion is resolution-independent; a small trace is fast
FULL = {"models": ",".join(MODELS), "clips": f"static,bigbuckbunny,{SCENE_CUT}",
        "resolutions": "720x1280", "frames": 40, "sweep": "0.01,0.02,0.05,0.1", "compile": True}
QUICK = {"models": "mobilenet_v2", "clips": f"static,{SCENE_CUT},bigbuckbunny",
         "resolutions": "720x1280", "frames": 40, "sweep": "0.01,0.05", "compile": False}
# The default run: FULL's combinations plus these (model, clip, resolution) cases.
MATRIX = [("mobilenet_v2", clip, size) for size in ("1080x1920", "224")
          for clip in ("static", "bigbuckbunny")]


@dataclass
class ThresholdSetting:
    """One threshold configuration of a delta model, by label."""

    label: str
    config: ThresholdConfig

    def apply(self, model: nn.Module) -> None:
        self.config.apply_to(model)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deltaconvert bench", description="Delta models against dense baselines on video "
        "(see the module docstring of deltaconvert.bench.matrix for what is measured).")
    parser.add_argument("--quick", action="store_true",
                        help=f"quick defaults: {QUICK} (explicit flags still win)")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--clips", help=f"comma-separated: {', '.join(CLIPS)}, {SCENE_CUT} "
                        "(the static clip with every pixel changing) or video file paths")
    parser.add_argument("--resolutions", help="comma-separated HxW, or H to keep the clip's aspect")
    parser.add_argument("--frames", type=int, help="frames per clip (from its start)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="delta frames after frame 0 left out of the median (default 2)")
    parser.add_argument("--sweep", help="uniform thresholds to sweep, comma-separated ('' for none)")
    parser.add_argument("--delta-precisions", default="fp32,fp16", help="default fp32,fp16")
    parser.add_argument("--delta-modes",
                        help="delta model modes: eager, graph (convert(..., cuda_graph=True), CUDA "
                        "only); default graph on a GPU, eager on a CPU")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="time torch.compile(mode='reduce-overhead') fp16 (default: on, off "
                        "with --quick)")
    parser.add_argument("--backend", default="auto", help="delta backend: auto, reference or cuda")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="clips and weights staged here are used first, and the static clip "
                        "is generated here on first use (default: $DELTACONVERT_DATA_DIR, else "
                        f"the user cache folder; here {default_data_dir()})")
    parser.add_argument("--configs-dir", type=Path,
                        help="where tuned threshold YAML files are looked up (default: those "
                        "installed with deltaconvert, deltaconvert.configs)")
    parser.add_argument("--profile-frames", type=int, default=5,
                        help="delta frames profiled to count kernel launches (default 5)")
    parser.add_argument("--reference-cache-gb", type=float, default=4.0,
                        help="device memory for dense fp32 reference outputs (default 4)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="output folder")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    if args.configs_dir is None:
        args.configs_dir = configs_dir()
    matrix = not (args.quick or args.models or args.clips or args.resolutions)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = torch.device(args.device)
    if args.delta_modes is None:
        args.delta_modes = "graph" if args.device.type == "cuda" else "eager"
    models, clips = _split(args.models), _split(args.clips)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    cases = [(m, c, r) for r in _split(args.resolutions) for c in clips for m in models]
    args.cases = [(m, c, parse_resolution(r)) for m, c, r in cases + (MATRIX if matrix else [])]
    args.sweep = [float(v) for v in _split(args.sweep)]
    args.delta_precisions = _split(args.delta_precisions)
    if any(p not in PRECISIONS for p in args.delta_precisions):
        parser.error(f"--delta-precisions: choose from {', '.join(PRECISIONS)}")
    args.delta_modes = _split(args.delta_modes)
    if any(m not in ("eager", "graph") for m in args.delta_modes):
        parser.error("--delta-modes: choose from eager, graph")
    if args.frames < args.warmup + 2:
        parser.error("--frames must leave at least one timed frame after frame 0 and the warm-up")
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in str(text).split(",") if part.strip()]


# -- what runs ------------------------------------------------------------------------------
def tuned_configs(configs_dir: Path, model_name: str) -> list[ThresholdSetting]:
    """The shipped threshold files whose ``architecture`` is ``model_name``."""
    import yaml

    settings = []
    for path in sorted(Path(configs_dir).glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if isinstance(data, dict) and data.get("architecture") == model_name:
            settings.append(ThresholdSetting(f"tuned:{path.stem}", load_thresholds(path)))
    return settings


def threshold_settings(args: argparse.Namespace, model_name: str, clip: str) -> list[ThresholdSetting]:
    """Threshold 0, then (not on the scene-cut clip) tuned files and the sweep."""
    settings = [ThresholdSetting("τ=0", ThresholdConfig())]
    if clip == SCENE_CUT:
        return settings
    settings += tuned_configs(args.configs_dir, model_name)
    settings += [ThresholdSetting(f"τ={tau:g}", ThresholdConfig(default=tau, input_threshold=tau))
                 for tau in args.sweep]
    return settings


@dataclass
class Unsupported:
    """``convert`` does not offer an option (e.g. ``cuda_graph=True``) in this version."""

    reason: str


class Conversions:
    """Converted delta models by (model, dense layers, CUDA graph, precision), made once
    and reused for every clip and resolution (kept on the CPU between cases)."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.cache: dict[tuple, nn.Module | Unsupported | str] = {}

    def get(self, name: str, model: nn.Module, dense: tuple[str, ...], graph: bool,
            precision: str) -> nn.Module | Unsupported | str:
        """The converted model, :class:`Unsupported`, or why conversion failed."""
        key = (name, dense, graph, precision)
        if key not in self.cache:
            options: dict[str, Any] = {"cuda_graph": True} if graph else {}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # dense islands are recorded in model.conversion
                    self.cache[key] = convert(model, torch.randn(CONVERT_EXAMPLE), backend=self.backend,
                                              thresholds=ThresholdConfig(dense=list(dense)),
                                              architecture=name, **options)
            except TypeError as error:
                if not graph or "cuda_graph" not in str(error):
                    raise
                self.cache[key] = Unsupported(f"convert() has no cuda_graph option yet ({error})")
            except Exception as error:  # noqa: BLE001 - reported per runner, the benchmark goes on
                self.cache[key] = f"{type(error).__name__}: {error}"
        return self.cache[key]


# -- measuring one runner --------------------------------------------------------------------
def measure(runner: Runner, frames: list[torch.Tensor], reference: Reference, harness: Memory,
            args: argparse.Namespace) -> dict[str, Any]:
    """Accuracy, timing and launch passes of one runner (see deltaconvert.bench.runners)."""
    accuracy = accuracy_pass(runner, frames, reference)
    timing = timed_pass(runner, frames, harness)
    launches = count_launches(runner, frames[:args.profile_frames + 1])
    warm = slice(1 + args.warmup, len(frames))
    record = {**runner.describe(), "status": "ok", "error": None,
              "ms_median": statistics.median(timing.ms_per_frame[warm]),
              "first_frame_ms": timing.ms_per_frame[0],
              "timed_frames": [warm.start, warm.stop],
              "ms_per_frame": timing.ms_per_frame,
              "peak_allocated_bytes": timing.peak.allocated if timing.peak else None,
              "peak_reserved_bytes": timing.peak.reserved if timing.peak else None,
              "kernels_per_frame": launches[0] if launches else None,
              "launch_calls_per_frame": launches[1] if launches else None,
              **error_summary("output", accuracy.output[1:]),
              **error_summary("pooled", accuracy.pooled[1:])}
    if isinstance(runner, DeltaRunner):
        stats = accuracy.stats
        warm_work = [w for w in accuracy.work_fraction[warm] if w is not None]
        record.update({
            "work_fraction": statistics.fmean(warm_work) if warm_work else None,
            "work_fraction_per_frame": accuracy.work_fraction,
            "layers": {name: {k: entry[k] for k in ("updated_mean", "updated_last") if k in entry}
                       for name, entry in stats["layers"].items() if "updated_mean" in entry},
            "state_bytes": accuracy.state_bytes,
            "dense_islands": runner.model.dense_islands,
        })
    return record


def report(record: dict[str, Any]) -> dict[str, Any]:
    """Log one runner's outcome (progress on stderr) and return it."""
    if record["status"] == "ok":
        work = f", work {record['work_fraction']:.3f}" if record.get("work_fraction") is not None else ""
        log(f"  {record['name']}: {record['ms_median']:.3f} ms/frame, pooled err "
            f"{record['err_pooled_mean']:.2e}{work}")
    else:
        log(f"  {record['name']}: {record['status']}: {record['error']}")
    return record


def error_summary(what: str, errors: list[float]) -> dict[str, float]:
    return {f"err_{what}_mean": float(np.mean(errors)), f"err_{what}_max": float(np.max(errors))}


def failure(describe: dict[str, Any], error: BaseException | str) -> dict[str, Any]:
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {**describe, "status": "failed", "error": message.strip().splitlines()[0][:500]}


def guarded(describe: dict[str, Any], work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()``, or a failure record: one runner failing never stops the benchmark."""
    try:
        return work()
    except Exception as error:  # noqa: BLE001
        return failure(describe, error)


# -- one case --------------------------------------------------------------------------------
def dense_baselines(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(precision, mode) of every dense baseline that can run on this device."""
    modes = list(BASELINE_MODES) + ([("fp16", "compile")] if args.compile else [])
    if args.device.type != "cuda":  # no CUDA graphs, no TF32 and no fast fp16 on a CPU
        modes = [("fp32", "eager")]
    return modes


def run_case(args: argparse.Namespace, model_name: str, model: nn.Module, clip: str,
             frames: list[torch.Tensor], conversions: Conversions) -> dict[str, Any]:
    """Every runner of one model on one clip at one resolution."""
    device = args.device
    reference = Reference(DenseRunner(model, PRECISIONS["fp32"], "eager", device), frames,
                          int(args.reference_cache_gb * 2**30))
    runners: list[dict[str, Any]] = []
    for precision, mode in dense_baselines(args):
        describe = {"name": f"dense {precision} {mode}", "kind": "dense", "precision": precision,
                    "mode": mode}

        def dense(precision: str = precision, mode: str = mode) -> dict[str, Any]:
            harness = memory_now(device)
            runner = DenseRunner(model, PRECISIONS[precision], mode, device)
            return measure(runner, frames, reference, harness, args)
        runners.append(report(guarded(describe, dense)))

    settings = threshold_settings(args, model_name, clip)
    graph_modes = [mode == "graph" for mode in args.delta_modes if mode == "eager" or device.type == "cuda"]
    for graph in graph_modes:
        for dense_layers in sorted({tuple(s.config.dense) for s in settings}):
            group = [s for s in settings if tuple(s.config.dense) == dense_layers]
            for precision in args.delta_precisions:
                runners += delta_group(args, model_name, model, frames, reference, conversions,
                                       graph, dense_layers, group, PRECISIONS[precision])
    case = {"model": model_name, "clip": clip, "resolution": list(frames[0].shape[2:]),
            "frames": len(frames), "runners": runners}
    add_ratios(case)
    return case


def delta_group(args: argparse.Namespace, model_name: str, model: nn.Module, frames: list[torch.Tensor],
                reference: Reference, conversions: Conversions, graph: bool, dense_layers: tuple[str, ...],
                settings: list[ThresholdSetting], precision: Precision) -> list[dict[str, Any]]:
    """One delta runner (a conversion in one precision) over its threshold settings."""
    device = args.device
    variant = f"delta {precision.name}{' graph' if graph else ''}"
    describes = [{"name": f"{variant} {s.label}", "kind": "delta", "precision": precision.name,
                  "mode": "graph" if graph else "eager", "thresholds": s.label} for s in settings]
    converted = conversions.get(model_name, model, dense_layers, graph, precision.name)
    if isinstance(converted, Unsupported):
        return [report({**describes[0], "name": variant, "thresholds": None, "status": "unsupported",
                        "error": converted.reason})]
    if isinstance(converted, str):
        return [report(failure(d, converted)) for d in describes]
    harness = memory_now(device)
    try:
        runner = DeltaRunner(converted, precision, device, graph=graph)
    except Exception as error:  # noqa: BLE001
        return [report(failure(d, error)) for d in describes]

    def one(setting: ThresholdSetting) -> dict[str, Any]:
        runner.configure(setting.label, setting.apply)
        return measure(runner, frames, reference, harness, args)
    records = [report(guarded(d, lambda s=s: one(s))) for d, s in zip(describes, settings)]
    runner.release()
    return records


def add_ratios(case: dict[str, Any]) -> None:
    """Speedups over every dense baseline, and the efficiency of delta runners."""
    ok = [r for r in case["runners"] if r["status"] == "ok"]
    baselines = {r["name"]: r["ms_median"] for r in ok if r["kind"] == "dense"}
    efficiency_base = EFFICIENCY_BASELINE if EFFICIENCY_BASELINE in baselines else \
        min(baselines, key=baselines.get, default=None)
    case["efficiency_baseline"] = efficiency_base
    for record in ok:
        record["speedup"] = {name: ms / record["ms_median"] for name, ms in baselines.items()}
        if record["kind"] == "delta":
            work = record.get("work_fraction")
            record["efficiency"] = (record["ms_median"] / (baselines[efficiency_base] * work)
                                    if efficiency_base and work else None)


# -- the whole run -----------------------------------------------------------------------------
def environment(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    device = args.device
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "deltaconvert bench " + " ".join(shlex.quote(a) for a in argv),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or "cpu"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "deltaconvert": __version__, "python": platform.python_version(),
        "backend_requested": args.backend, "batch": 1,
        "settings": {"frames": args.frames, "warmup": args.warmup, "sweep": args.sweep,
                     "delta_precisions": args.delta_precisions, "delta_modes": args.delta_modes,
                     "compile": args.compile,
                     "profile_frames": args.profile_frames, "efficiency_baseline": EFFICIENCY_BASELINE},
    }


def group_cases(cases: list[tuple[str, str, tuple[int, int | None]]]
                ) -> dict[tuple[str, tuple[int, int | None]], list[str]]:
    """(clip, resolution) → models, in order of first appearance: each clip is resized
    once per resolution."""
    groups: dict[tuple[str, tuple[int, int | None]], list[str]] = {}
    for model, clip, resolution in cases:
        groups.setdefault((clip, resolution), []).append(model)
    return groups


def load_clips(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Decoded RGB frames of every real clip needed (the scene cut reuses 'static')."""
    names = {("static" if c == SCENE_CUT else c) for _, c, _ in args.cases}
    return {name: decode_rgb(clip_path(name, args.data_dir), args.frames) for name in sorted(names)}


def run(args: argparse.Namespace, argv: list[str],
        on_case: Callable[[dict[str, Any]], None] = lambda results: None) -> dict[str, Any]:
    """Every case; ``on_case(results so far)`` after each one."""
    torch.backends.cudnn.benchmark = True
    results: dict[str, Any] = {"meta": environment(args, argv), "cases": []}
    decoded = load_clips(args)
    calibration = [f for rgb in decoded.values() for f in to_frames(rgb[:2], 224, None, torch.device("cpu"))]
    models = {name: build_model(name, args.data_dir, calibration)
              for name in dict.fromkeys(m for m, _, _ in args.cases)}
    conversions = Conversions(args.backend)
    for (clip, (height, width)), names in group_cases(args.cases).items():
        source = decoded["static" if clip == SCENE_CUT else clip]
        frames = to_frames(source, height, width, args.device)
        if clip == SCENE_CUT:
            frames = scene_cut_frames(frames)
        for name in names:
            log(f"{name} on {clip} at {tuple(frames[0].shape[2:])}")
            started = time.perf_counter()
            case = run_case(args, name, models[name], clip, frames, conversions)
            case["wall_s"] = time.perf_counter() - started
            log(f"  case done in {case['wall_s']:.0f} s")
            results["cases"].append(case)
            on_case(results)
        del frames
        memory_now(args.device)
    return results


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def write_results(results: dict[str, Any], out: Path) -> str:
    """bench.json and bench.md under ``out``, each written atomically; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "bench.json", json.dumps(results, indent=1))
    table = markdown(results)
    write_text_atomic(out / "bench.md", table)
    return table


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write bench.json and bench.md under ``--out`` after every case
    (so an interrupted run keeps what it measured) and the plots at the end; print the
    markdown tables."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    results = run(args, argv, on_case=lambda partial: write_results(partial, args.out))
    table = write_results(results, args.out)
    if not args.no_plots and write_plots(results, args.out) is None:
        log("matplotlib is not installed: no plots (pip install 'deltaconvert[bench]')")
    print(table)
    return 0
