"""The delta-inference benchmark (``deltaconvert bench``): delta models against the best
dense inference, all measured in one process on the same frames.

For every model × clip × resolution × number of streams ("case"; one stream is batch 1):

* dense baselines (``--baselines``), each a copy of the model with channels_last
  parameters and ``cudnn.benchmark`` on: fp32 (TF32 off), TF32 and fp16, each eager and
  replayed from a CUDA graph, and fp16 ``torch.compile(mode="reduce-overhead")``
  (``--no-compile``: without it; ``--compile-models``: only for those);
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
threshold 0 runs on it.

For issue 11, also:

* ``--streams N,…``: N independent streams in one batch (:mod:`deltaconvert.bench.streams`:
  stream i is the clip from frame i·stride on), after the batch-1 run of the same model,
  clip and resolution: the dense baselines at batch N, and the delta model at the tuned
  thresholds and those the criterion selected at batch 1; per runner ms per batch,
  frames per second over all streams, and peak memory and ``state_bytes()`` per stream;
* the unchanged frame of every delta model at batch 1 (:mod:`deltaconvert.bench.unchanged`),
  statistics on and off;
* per delta model and case, ``ms ≈ a + b·work`` fitted over its threshold settings
  (:mod:`deltaconvert.bench.fit`);
* the accuracy criterion (:mod:`deltaconvert.bench.criterion`): pooled error ≤ max(2 %,
  dense fp16's own), and the fastest delta run within it per case and precision;
* the verdict on the issue's targets (:mod:`deltaconvert.bench.verdict`), printed last and
  stored under ``verdict`` in bench.json; ``--suite issue11`` runs exactly the cases and
  runners it needs.

Without ``--models``, ``--clips``, ``--resolutions`` or ``--quick`` the cases are the
default matrix: every model on the static clip, bigbuckbunny and the scene cut at
720×1280, and mobilenet_v2 on the static clip and bigbuckbunny at 1080×1920 and 224 high
(:data:`MATRIX`); with any of them, every combination of the given (or default) models,
clips and resolutions. Clips and weights come from :mod:`deltaconvert.bench.data` (the
static clip is generated into the data folder on first use).

    deltaconvert bench --quick                 # a few minutes on a GPU
    deltaconvert bench --suite issue11         # the issue-11 verdict (a few minutes on an H200)
    deltaconvert bench                         # the matrix (about 8 minutes on an H200)
    deltaconvert bench --device cpu --resolutions 32x48 --frames 6 --models mobilenet_v2
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
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
from .criterion import criterion_summary
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
from .fit import case_fits, variant
from .models import MODELS, build_model
from .report import EFFICIENCY_BASELINE, markdown, write_plots
from .runners import (
    PRECISIONS,
    SETTLE_FRAMES,
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
from .streams import DEFAULT_STRIDE, stream_batches
from .unchanged import unchanged_frame
from .verdict import verdict

SCENE_CUT = "scenecut"
BASELINE_MODES = ("fp32-eager", "fp32-graph", "tf32-eager", "tf32-graph", "fp16-eager", "fp16-graph")
CONVERT_EXAMPLE = (1, 3, 64, 64)  # conversion is resolution-independent; a small trace is fast
FULL = {"models": ",".join(MODELS), "clips": f"static,bigbuckbunny,{SCENE_CUT}",
        "resolutions": "720x1280", "frames": 40, "sweep": "0.01,0.02,0.05,0.1", "compile": True,
        "delta_precisions": "fp32,fp16"}
QUICK = {"models": "mobilenet_v2", "clips": f"static,{SCENE_CUT},bigbuckbunny",
         "resolutions": "720x1280", "frames": 40, "sweep": "0.01,0.05", "compile": False,
        "delta_precisions": "fp32,fp16"}
# The default run: FULL's combinations plus these (model, clip, resolution, streams) cases.
MATRIX = [("mobilenet_v2", clip, size, 1) for size in ("1080x1920", "224")
          for clip in ("static", "bigbuckbunny")]
# --suite issue11: exactly the cases and runners the verdict of issue 11 needs
# (deltaconvert.bench.verdict); torch.compile only where a target compares with it.
SUITES = {
    "issue11": {
        "cases": [(m, "static", "720x1280", 1) for m in MODELS] + [
            ("mobilenet_v2", SCENE_CUT, "720x1280", 1)] + [
            ("mobilenet_v2", "static", "720x1280", n) for n in (8, 32)],
        "options": {"frames": 40, "sweep": "0.01,0.02,0.05,0.1", "delta_precisions": "fp16",
                    "baselines": "fp16-graph", "compile": True, "compile_models": "mobilenet_v2"},
    },
}


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
    parser.add_argument("--suite", choices=sorted(SUITES),
                        help="issue11: the cases and runners the issue-11 verdict needs (every model "
                        "on the static clip at 720x1280, mobilenet_v2 on the scene cut and with 8 and "
                        "32 streams; dense fp16 graph, fp16 torch.compile for mobilenet_v2, delta fp16; "
                        "about 3 minutes on an H200); other flags still win, except the case "
                        "selection (--models, --clips, --resolutions, --streams, --quick)")
    parser.add_argument("--models", help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--clips", help=f"comma-separated: {', '.join(CLIPS)}, {SCENE_CUT} "
                        "(the static clip with every pixel changing) or video file paths")
    parser.add_argument("--resolutions", help="comma-separated HxW, or H to keep the clip's aspect")
    parser.add_argument("--frames", type=int, help="frames per clip (from its start)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="delta frames after frame 0 left out of the median (default 2)")
    parser.add_argument("--streams", default="1",
                        help="comma-separated numbers of independent streams per batch (default 1); "
                        "each N > 1 runs after the case's batch-1 run, with the dense baselines but "
                        "torch.compile, and the delta model at the tuned thresholds and those the "
                        "criterion selected at batch 1 (see deltaconvert.bench.streams)")
    parser.add_argument("--stream-stride", type=int, default=DEFAULT_STRIDE,
                        help=f"stream i starts at clip frame i·STRIDE mod frames (default {DEFAULT_STRIDE})")
    parser.add_argument("--sweep", help="uniform thresholds to sweep, comma-separated ('' for none)")
    parser.add_argument("--delta-precisions", help="default fp32,fp16 (--suite issue11: fp16)")
    parser.add_argument("--delta-modes",
                        help="delta model modes: eager, graph (convert(..., cuda_graph=True), CUDA "
                        "only); default graph on a GPU, eager on a CPU")
    parser.add_argument("--baselines",
                        help=f"dense baselines, comma-separated from {', '.join(BASELINE_MODES)} "
                        "(default: all; a CPU runs fp32-eager only)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction,
                        help="time torch.compile(mode='reduce-overhead') fp16 (default: on, off "
                        "with --quick)")
    parser.add_argument("--compile-models",
                        help="comma-separated models timed with torch.compile (default: every model)")
    parser.add_argument("--unchanged-calls", type=int, default=50,
                        help="calls measured on the unchanged frame per delta model, batch 1, not on "
                        "the scene cut (see deltaconvert.bench.unchanged; 0: none; default 50)")
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
                        help="frames profiled to count kernel launches, after each runner's first "
                        f"{SETTLE_FRAMES} (default 5)")
    parser.add_argument("--reference-cache-gb", type=float, default=4.0,
                        help="device memory for dense fp32 reference outputs (default 4)")
    parser.add_argument("--out", type=Path, default=Path("out/bench"), help="output folder")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)
    if args.configs_dir is None:
        args.configs_dir = configs_dir()
    selection = args.quick or args.models or args.clips or args.resolutions or args.streams != "1"
    if args.suite and selection:
        parser.error("--suite selects the cases: leave out --quick, --models, --clips, --resolutions "
                     "and --streams")
    suite = SUITES[args.suite] if args.suite else None
    defaults = suite["options"] if suite else QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.device = torch.device(args.device)
    if args.delta_modes is None:
        args.delta_modes = "graph" if args.device.type == "cuda" else "eager"
    if suite:
        cases = suite["cases"]
    else:
        models, clips = _split(args.models), _split(args.clips)
        unknown = [m for m in models if m not in MODELS]
        if unknown:
            parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
        if not all(n.isdigit() and int(n) > 0 for n in _split(args.streams)):
            parser.error("--streams: positive integers, comma-separated")
        streams = sorted({int(n) for n in _split(args.streams)})
        cases = [(m, c, r, n) for n in streams for r in _split(args.resolutions) for c in clips
                 for m in models] + (MATRIX if not selection else [])
    args.cases = [(m, c, parse_resolution(r), n) for m, c, r, n in cases]
    args.baselines = _split(args.baselines or ",".join(BASELINE_MODES))
    if any(b not in BASELINE_MODES for b in args.baselines):
        parser.error(f"--baselines: choose from {', '.join(BASELINE_MODES)}")
    args.compile_models = _split(args.compile_models) if args.compile_models else list(MODELS)
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


def uniform_setting(tau: float) -> ThresholdSetting:
    """Every op and the input Sparsify at threshold ``tau``, labelled ``τ=…``."""
    return ThresholdSetting(f"τ={tau:g}", ThresholdConfig(default=tau, input_threshold=tau))


def threshold_settings(args: argparse.Namespace, model_name: str, clip: str) -> list[ThresholdSetting]:
    """Threshold 0, then (not on the scene-cut clip) tuned files and the sweep."""
    settings = [ThresholdSetting("τ=0", ThresholdConfig())]
    if clip == SCENE_CUT:
        return settings
    settings += tuned_configs(args.configs_dir, model_name)
    settings += [uniform_setting(tau) for tau in args.sweep]
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
    launches = count_launches(runner, frames[:args.profile_frames + SETTLE_FRAMES])
    warm = slice(1 + args.warmup, len(frames))
    streams = frames[0].shape[0]
    record = {**runner.describe(), "status": "ok", "error": None,
              "ms_median": statistics.median(timing.ms_per_frame[warm]),
              "first_frame_ms": timing.ms_per_frame[0],
              "timed_frames": [warm.start, warm.stop],
              "ms_per_frame": timing.ms_per_frame,
              "peak_allocated_bytes": timing.peak.allocated if timing.peak else None,
              "peak_reserved_bytes": timing.peak.reserved if timing.peak else None,
              "peak_allocated_per_stream": timing.peak.allocated / streams if timing.peak else None,
              "peak_reserved_per_stream": timing.peak.reserved / streams if timing.peak else None,
              "kernels_per_frame": launches[0] if launches else None,
              "launch_calls_per_frame": launches[1] if launches else None,
              **error_summary("output", accuracy.output[1:]),
              **error_summary("pooled", accuracy.pooled[1:])}
    record["frames_per_s"] = 1e3 * streams / record["ms_median"]
    if isinstance(runner, DeltaRunner):
        stats = accuracy.stats
        warm_work = [w for w in accuracy.work_fraction[warm] if w is not None]
        record.update({
            "work_fraction": statistics.fmean(warm_work) if warm_work else None,
            "work_fraction_per_frame": accuracy.work_fraction,
            "layers": {name: {k: entry[k] for k in ("updated_mean", "updated_last") if k in entry}
                       for name, entry in stats["layers"].items() if "updated_mean" in entry},
            "state_bytes": accuracy.state_bytes,
            "state_bytes_per_stream": accuracy.state_bytes / streams,
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
def dense_baselines(args: argparse.Namespace, model_name: str, streams: int) -> list[tuple[str, str]]:
    """(precision, mode) of every dense baseline asked for that can run on this device;
    torch.compile at batch 1 only (every batch size would compile again)."""
    modes = [tuple(b.split("-")) for b in args.baselines]
    if args.compile and model_name in args.compile_models and streams == 1:
        modes.append(("fp16", "compile"))
    if args.device.type != "cuda":  # no CUDA graphs, no TF32 and no fast fp16 on a CPU
        modes = [("fp32", "eager")]
    return modes


def run_case(args: argparse.Namespace, model_name: str, model: nn.Module, clip: str,
             frames: list[torch.Tensor], conversions: Conversions,
             selected: set[str] = frozenset()) -> dict[str, Any]:
    """Every runner of one model on one clip at one resolution and number of streams
    (the batch size of ``frames``). With one stream: every threshold setting, the
    unchanged frame (not on the scene cut) and the cost fit; with more: the tuned
    settings and those labelled in ``selected`` (chosen by the criterion at batch 1),
    or threshold 0 if there are none."""
    device = args.device
    streams = frames[0].shape[0]
    reference = Reference(DenseRunner(model, PRECISIONS["fp32"], "eager", device), frames,
                          int(args.reference_cache_gb * 2**30))
    runners: list[dict[str, Any]] = []
    for precision, mode in dense_baselines(args, model_name, streams):
        describe = {"name": f"dense {precision} {mode}", "kind": "dense", "precision": precision,
                    "mode": mode}

        def dense(precision: str = precision, mode: str = mode) -> dict[str, Any]:
            harness = memory_now(device)
            runner = DenseRunner(model, PRECISIONS[precision], mode, device)
            return measure(runner, frames, reference, harness, args)
        runners.append(report(guarded(describe, dense)))

    settings = threshold_settings(args, model_name, clip)
    if streams > 1:
        settings = [s for s in settings if s.label in selected or s.label.startswith("tuned:")] or settings[:1]
    unchanged_setting = settings[0] if streams == 1 and clip != SCENE_CUT and args.unchanged_calls else None
    unchanged: dict[str, Any] = {}
    graph_modes = [mode == "graph" for mode in args.delta_modes if mode == "eager" or device.type == "cuda"]
    for graph in graph_modes:
        for dense_layers in sorted({tuple(s.config.dense) for s in settings}):
            group = [s for s in settings if tuple(s.config.dense) == dense_layers]
            for precision in args.delta_precisions:
                records, still = delta_group(
                    args, model_name, model, frames, reference, conversions, graph, dense_layers,
                    group, PRECISIONS[precision], unchanged_setting if unchanged_setting in group else None)
                runners += records
                unchanged.update(still)
    case = {"model": model_name, "clip": clip, "resolution": list(frames[0].shape[2:]),
            "streams": streams, "frames": len(frames), "runners": runners, "unchanged": unchanged}
    add_ratios(case)
    case["fits"] = case_fits(case) if streams == 1 and clip != SCENE_CUT else {}
    case["criterion"] = criterion_summary(case, args.delta_precisions)
    return case


def delta_group(args: argparse.Namespace, model_name: str, model: nn.Module, frames: list[torch.Tensor],
                reference: Reference, conversions: Conversions, graph: bool, dense_layers: tuple[str, ...],
                settings: list[ThresholdSetting], precision: Precision,
                unchanged_setting: ThresholdSetting | None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One delta runner (a conversion in one precision) over its threshold settings; then,
    given ``unchanged_setting``, the unchanged frame at that setting. Returns the runner
    records and ``{variant: unchanged-frame measurements}`` (empty without)."""
    device = args.device
    mode = "graph" if graph else "eager"
    name = variant({"precision": precision.name, "mode": mode})
    describes = [{"name": f"{name} {s.label}", "kind": "delta", "precision": precision.name,
                  "mode": mode, "thresholds": s.label} for s in settings]
    converted = conversions.get(model_name, model, dense_layers, graph, precision.name)
    if isinstance(converted, Unsupported):
        return [report({**describes[0], "name": name, "thresholds": None, "status": "unsupported",
                        "error": converted.reason})], {}
    if isinstance(converted, str):
        return [report(failure(d, converted)) for d in describes], {}
    harness = memory_now(device)
    try:
        runner = DeltaRunner(converted, precision, device, graph=graph)
    except Exception as error:  # noqa: BLE001
        return [report(failure(d, error)) for d in describes], {}

    def one(setting: ThresholdSetting) -> dict[str, Any]:
        runner.configure(setting.label, setting.apply)
        return measure(runner, frames, reference, harness, args)
    records = [report(guarded(d, lambda s=s: one(s))) for d, s in zip(describes, settings)]
    unchanged = {}
    if unchanged_setting is not None:
        try:
            runner.configure(unchanged_setting.label, unchanged_setting.apply)
            unchanged[name] = {"thresholds": unchanged_setting.label,
                               **unchanged_frame(runner, frames[0], args.unchanged_calls)}
            log(f"  {name} unchanged frame: {unchanged[name]['statistics on']['wall_ms']:.3f} ms "
                "wall with statistics on")
        except Exception as error:  # noqa: BLE001 - reported, the benchmark goes on
            unchanged[name] = {"error": failure({}, error)["error"]}
            log(f"  {name} unchanged frame: failed: {unchanged[name]['error']}")
    runner.release()
    return records, unchanged


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
        "backend_requested": args.backend,
        # the CUDA engine's switches set in the environment (DELTACONVERT_CUDA_PDL=1, …)
        "switches": {k: v for k, v in sorted(os.environ.items()) if k.startswith("DELTACONVERT_CUDA_")},
        "settings": {"suite": args.suite, "frames": args.frames, "warmup": args.warmup,
                     "sweep": args.sweep, "delta_precisions": args.delta_precisions,
                     "delta_modes": args.delta_modes, "baselines": args.baselines,
                     "compile": args.compile, "compile_models": args.compile_models,
                     "stream_stride": args.stream_stride, "unchanged_calls": args.unchanged_calls,
                     "profile_frames": args.profile_frames, "efficiency_baseline": EFFICIENCY_BASELINE},
    }


def group_cases(cases: list[tuple[str, str, tuple[int, int | None], int]]
                ) -> dict[tuple[str, tuple[int, int | None]], list[tuple[str, int]]]:
    """(clip, resolution) → (model, streams), in order of first appearance with one
    stream before more (a case with N streams uses what the batch-1 case selected):
    each clip is resized once per resolution."""
    groups: dict[tuple[str, tuple[int, int | None]], list[tuple[str, int]]] = {}
    for model, clip, resolution, streams in cases:
        groups.setdefault((clip, resolution), []).append((model, streams))
    return {key: sorted(runs, key=lambda run: run[1] > 1) for key, runs in groups.items()}


def load_clips(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Decoded RGB frames of every real clip needed (the scene cut reuses 'static')."""
    names = {("static" if c == SCENE_CUT else c) for _, c, _, _ in args.cases}
    return {name: decode_rgb(clip_path(name, args.data_dir), args.frames) for name in sorted(names)}


def run(args: argparse.Namespace, argv: list[str],
        on_case: Callable[[dict[str, Any]], None] = lambda results: None) -> dict[str, Any]:
    """Every case; ``on_case(results so far)`` after each one."""
    torch.backends.cudnn.benchmark = True
    results: dict[str, Any] = {"meta": environment(args, argv), "cases": []}
    decoded = load_clips(args)
    calibration = [f for rgb in decoded.values() for f in to_frames(rgb[:2], 224, None, torch.device("cpu"))]
    models = {name: build_model(name, args.data_dir, calibration)
              for name in dict.fromkeys(m for m, _, _, _ in args.cases)}
    conversions = Conversions(args.backend)
    for (clip, (height, width)), runs in group_cases(args.cases).items():
        source = decoded["static" if clip == SCENE_CUT else clip]
        frames = to_frames(source, height, width, args.device)
        if clip == SCENE_CUT:
            frames = scene_cut_frames(frames)
        selected: dict[str, set[str]] = {}  # model → threshold labels selected at batch 1
        for name, streams in runs:
            log(f"{name} on {clip} at {tuple(frames[0].shape[2:])}, {streams} stream(s)")
            started = time.perf_counter()
            batches = stream_batches(frames, streams, args.stream_stride)
            case = run_case(args, name, models[name], clip, batches, conversions,
                            selected.get(name, set()))
            del batches
            case["wall_s"] = time.perf_counter() - started
            log(f"  case done in {case['wall_s']:.0f} s")
            if streams == 1:
                selected[name] = {t for t in case["criterion"]["selected_thresholds"].values() if t}
            results["cases"].append(case)
            results["verdict"] = verdict(results)
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
    markdown tables, the verdict on the issue-11 targets last."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    results = run(args, argv, on_case=lambda partial: write_results(partial, args.out))
    table = write_results(results, args.out)
    if not args.no_plots and write_plots(results, args.out) is None:
        log("matplotlib is not installed: no plots (pip install 'deltaconvert[bench]')")
    print(table)
    return 0
