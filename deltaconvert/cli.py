"""The ``deltaconvert`` command line (also ``python -m deltaconvert.cli``).

Subcommands: ``convert``, ``run``, ``tune``, ``bench``, ``info`` and ``demo``; each is
documented by ``deltaconvert COMMAND --help`` and in the README. Errors deltaconvert
anticipates (missing files, unknown names, bad values) print one message naming the
file, key or layer and the fix, and exit with status 1; usage errors exit with 2.
Every output file is written atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import DeltaConvertError
from .validation import check_output_directory, check_output_file

EXIT_ERROR = 1


# -- argument types ------------------------------------------------------------------------
def input_size(text: str) -> tuple[int, int]:
    """``HxW`` (e.g. ``224x224``) as ``(height, width)``."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 224x224, got {text!r}")
    return int(parts[0]), int(parts[1])


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {text!r}")
    return int(text)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeltaConvertError(f"--device {name}: no CUDA device is available; use --device cpu")
    return device


def _load_model(path: Path, device: torch.device, thresholds: Path | None):
    from .serialization import load
    model = load(path, device=device)
    if thresholds is not None:
        from .thresholds import ThresholdConfig
        ThresholdConfig.from_yaml(thresholds).apply_to(model)
    return model


def _video_frames(path: Path, size: tuple[int, int] | None, max_frames: int | None,
                  device: torch.device) -> list[torch.Tensor]:
    """The first ``max_frames`` frames of a video, in memory on ``device``."""
    from .video import iter_frames, video_info
    video_info(path)  # fails early and clearly for missing or undecodable files
    return [frame.to(device) for frame in iter_frames(path, size=size, max_frames=max_frames)]


# -- convert -------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    from .architectures import build_architecture, model_from_checkpoint
    from .convert import convert
    from .serialization import save
    check_output_file(args.output, "-o")
    if args.thresholds is not None:
        from .thresholds import ThresholdConfig
        thresholds = ThresholdConfig.from_yaml(args.thresholds)  # fail before the slow part
    else:
        thresholds = None
    if args.arch == "yolo":
        if args.checkpoint is None:
            raise DeltaConvertError("convert yolo needs --checkpoint FILE (an ultralytics .pt "
                                    "file such as best.pt or yolov8n.pt)")
        from .frontends.ultralytics import load_checkpoint
        model = load_checkpoint(args.checkpoint)
        weights = str(args.checkpoint)
    elif args.checkpoint is not None:
        model = model_from_checkpoint(args.arch, args.checkpoint, num_classes=args.num_classes)
        weights = str(args.checkpoint)
    else:
        model = build_architecture(args.arch, num_classes=args.num_classes)
        weights = "random init (--random-init)"
    plan = None
    if args.dense_tail is not None:
        from .dense_tail import plan_dense_tail
        device = _device(args.device)
        frames = _video_frames(args.dense_tail, args.tail_size, args.tail_frames, device)
        dtype = {"fp16": torch.float16, "fp32": torch.float32}[
            args.tail_dtype or ("fp16" if device.type == "cuda" else "fp32")]
        plan = plan_dense_tail(model, frames, thresholds, error_budget=args.tail_budget, dtype=dtype)
        print(f"dense tails measured on {args.dense_tail.name} ({len(frames)} frames "
              f"{frames[0].shape[-2]}x{frames[0].shape[-1]}, {str(dtype).removeprefix('torch.')}, "
              f"{device}):\n{plan.table()}")
        thresholds = plan.config
    height, width = args.input_size
    delta = convert(model, torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)),
                    thresholds=thresholds, architecture=args.arch)
    delta.conversion.update({"weights": weights, "input_size": [height, width]})
    if plan is not None:
        delta.conversion["dense_tail"] = plan.config.metadata["dense_tail"]
    save(delta, args.output)
    print(f"converted {args.arch} ({len(delta.delta_ops())} delta ops, {len(delta.thresholds)} "
          f"thresholds, {len(delta.dense_islands)} dense islands) → {args.output}")
    return 0


# -- run -----------------------------------------------------------------------------------
class _StreamSummary:
    """Per-stream counters of a run (constant memory apart from the delta-frame times)."""

    def __init__(self) -> None:
        self.frames = 0
        self.dense_ms: float | None = None
        self.delta_ms: list[float] = []
        self.work: list[float] = []
        self.errors: list[float] = []
        self.baseline_ms: list[float] = []
        self.failure: str | None = None  # why the source stopped early, if it did

    def as_dict(self) -> dict[str, Any]:
        delta = statistics.median(self.delta_ms) if self.delta_ms else None
        return {
            "frames": self.frames, "dense_frame_ms": self.dense_ms,
            "delta_frames": len(self.delta_ms), "delta_ms_median": delta,
            "delta_fps": 1000 / delta if delta else None,
            "work_fraction_mean": statistics.fmean(self.work) if self.work else None,
            "dense_baseline_ms_median": (statistics.median(self.baseline_ms)
                                         if self.baseline_ms else None),
            "error_vs_dense_mean": statistics.fmean(self.errors) if self.errors else None,
            "error_vs_dense_max": max(self.errors) if self.errors else None,
            "source_error": self.failure,
        }


def _describe(name: str, summary: dict[str, Any]) -> str:
    if summary["delta_frames"] == 0:
        speed = "no delta frame ran, so no delta-frame speed was measured"
    else:
        speed = (f"{summary['delta_fps']:.1f} fps on delta frames "
                 f"({summary['delta_ms_median']:.1f} ms/frame)")
    text = (f"{name}: {summary['frames']} frames; dense first frame "
            f"{summary['dense_frame_ms']:.1f} ms; {speed}")
    if summary["work_fraction_mean"] is not None:
        text += f"; work fraction {summary['work_fraction_mean']:.3f}"
    if summary["error_vs_dense_mean"] is not None:
        text += (f"; dense baseline {summary['dense_baseline_ms_median']:.1f} ms/frame, relative "
                 f"error vs dense {summary['error_vs_dense_mean']:.4f} mean, "
                 f"{summary['error_vs_dense_max']:.4f} max")
    if summary["source_error"] is not None:
        text += f"; STOPPED EARLY: {summary['source_error']}"
    return text


def _preprocess(args: argparse.Namespace, model: Any):
    from .sources import Preprocess
    try:
        return Preprocess.for_model(model, mean=args.mean and tuple(args.mean),
                                    std=args.std and tuple(args.std), size=args.resize,
                                    letterbox=args.letterbox or None)
    except ValueError as error:
        raise DeltaConvertError(str(error)) from None


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib
    import copy

    from tqdm import tqdm

    from .timing import timed
    from .files import write_text_atomic
    from .metrics import relative_error
    from .predict import stream_sources
    from .sinks import FrameRows, HeatmapVideo, new_run_folder
    from .sources import check_source, expand_sources
    check_output_directory(args.output, "-o")  # before any work
    device = _device(args.device)
    model = _load_model(args.model, device, args.thresholds)
    preprocess = _preprocess(args, model)
    sources = expand_sources(args.sources)
    for source in sources:  # fail early and clearly, before anything is written
        check_source(source)
    end = args.end
    if args.max_frames is not None:
        capped = args.start + args.max_frames * args.stride
        end = capped if end is None else min(end, capped)
    directory = new_run_folder(args.output)
    baseline = copy.deepcopy(model) if args.compare_dense else None
    summaries = {source.name: _StreamSummary() for source in sources}
    videos: dict[str, HeatmapVideo] = {}
    interrupted, failure = False, None
    rows = FrameRows(directory, save_outputs=not args.no_outputs)
    with contextlib.ExitStack() as stack:
        stack.callback(rows.close)
        stack.callback(lambda: [video.close() for video in videos.values()])
        def source_failed(name: str, error: Exception) -> None:  # the other streams go on
            summaries[name].failure = str(error)

        results = stream_sources(model, sources, preprocess=preprocess, stride=args.stride,
                                 start=args.start, end=end, heatmap=not args.no_heatmap,
                                 on_error=source_failed)
        try:
            for result in tqdm(results, desc="run", unit="frame"):
                summary = summaries[result.stream]
                summary.frames += 1
                if result.dense:
                    summary.dense_ms = result.ms
                else:
                    summary.delta_ms.append(result.ms)
                    if result.work_fraction is not None:
                        summary.work.append(result.work_fraction)
                row = {"stream": result.stream, "frame": result.frame, "dense": result.dense,
                       "ms": result.ms, "work_fraction": result.work_fraction}
                if baseline is not None:
                    baseline.reset()
                    reference, baseline_ms = timed(device, baseline, result.input)
                    summary.baseline_ms.append(baseline_ms)
                    row["error_vs_dense"] = relative_error(result.output, reference)
                    summary.errors.append(row["error_vs_dense"])
                rows.write(row, result.output)
                if result.heat is not None:
                    if result.stream not in videos:
                        videos[result.stream] = HeatmapVideo(directory / f"{result.stream}.mp4",
                                                             fps=args.fps or result.fps)
                    label = ("dense frame" if result.dense else
                             f"frame {result.frame}: work {100 * (result.work_fraction or 0):.1f}%")
                    videos[result.stream].write(result.rgb, result.heat, label)
        except KeyboardInterrupt:
            interrupted = True
        except DeltaConvertError as error:  # e.g. a stream that breaks off: keep the rest
            failure = error
    per_stream = {name: s.as_dict() for name, s in summaries.items()}
    write_text_atomic(directory / "summary.json", json.dumps({
        "model": str(args.model), "sources": {s.name: s.url for s in sources},
        "device": str(device), "backend": model.active_backend, "interrupted": interrupted,
        "error": None if failure is None else str(failure),
        "stride": args.stride, "start": args.start, "end": end, "streams": per_stream,
    }, indent=2))
    if failure is not None:
        raise failure
    for name, summary in per_stream.items():
        print(_describe(name, summary))
    written = ["frames.jsonl", "summary.json"] + (["outputs/"] if not args.no_outputs else [])
    written += [f"{name}.mp4" for name in videos]
    print(("interrupted; kept what ran: " if interrupted else "wrote ")
          + f"{', '.join(written)} in {directory}")
    stopped = [name for name, s in summaries.items() if s.failure is not None]
    for name in stopped:
        print(f"deltaconvert run: source {name} stopped early: {summaries[name].failure}",
              file=sys.stderr)
    return 130 if interrupted else 1 if stopped else 0


# -- tune ----------------------------------------------------------------------------------
def cmd_tune(args: argparse.Namespace) -> int:
    from .tune import tune
    check_output_file(args.output, "-o")  # before minutes of tuning
    device = _device(args.device)
    model = _load_model(args.model, device, None)
    frames = _video_frames(args.video, args.input_size, args.frames, device)
    config = tune(model, frames, args.budget, aggregate=args.aggregate,
                  clip=f"{args.video.name}, first {len(frames)} frames",
                  metadata={"weights": model.conversion.get("weights", "as saved in the model file")})
    config.to_yaml(args.output)
    meta = config.metadata
    work = ("" if meta["work_fraction"] is None else
            f", work fraction {meta['work_fraction_at_zero']:.3f} at threshold 0 → "
            f"{meta['work_fraction']:.3f}")
    print(f"tuned {len(config.layers) + 1} thresholds on {len(frames)} frames at "
          f"{frames[0].shape[-2]}x{frames[0].shape[-1]}: error {meta['error']:.4f} "
          f"(budget {args.budget}, {args.aggregate} relative error vs dense){work}; "
          f"wrote {args.output}")
    return 0


# -- bench ---------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    """Delegates every argument after ``bench`` to ``deltaconvert.bench.matrix.main``."""
    try:
        from .bench import matrix
    except ModuleNotFoundError as error:
        if error.name not in (f"{__package__}.bench", f"{__package__}.bench.matrix"):
            raise
        raise DeltaConvertError("the benchmark is not part of this installation "
                                "(deltaconvert/bench/matrix.py is missing); reinstall "
                                "deltaconvert") from None
    return int(matrix.main(list(args.bench_args)) or 0)


# -- serve ---------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    import time
    try:
        import ray
        from ray import serve
    except ImportError:
        raise DeltaConvertError("serving needs Ray Serve: pip install 'deltaconvert[serve]'") from None
    from .serialization import load
    from .serve import APP_NAME, build_app
    load(args.model)  # fails early and clearly for a missing or foreign file
    ray.init(address=args.address, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_app(args.model, replicas=args.replicas, slots=args.slots, device=args.device,
                        gpus_per_replica=args.gpus_per_replica, batch_wait_s=args.batch_wait_ms / 1000,
                        idle_timeout=args.idle_timeout, thresholds=args.thresholds),
              name=APP_NAME, route_prefix="/")
    print(f"serving {args.model} as Ray Serve application {APP_NAME!r}: {args.replicas} replica(s) "
          f"of {args.slots} slots; HTTP on http://{args.host}:{args.port}/ (POST an image with "
          f"headers x-session-id and x-frame); Python: deltaconvert.serve.StreamClient(). "
          "Ctrl-C stops.")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


# -- info ----------------------------------------------------------------------------------
def _megabytes(count: int) -> str:
    return f"{count / 2**20:.2f} MiB"


def cmd_info(args: argparse.Namespace) -> int:
    from .serialization import read_header
    header = read_header(args.model)
    model = _load_model(args.model, torch.device("cpu"), None)
    size = args.input_size or tuple(model.conversion.get("input_size", (224, 224)))
    model(torch.zeros(args.batch, 3, *size))  # a dense frame allocates every buffer
    thresholds = model.thresholds
    inputs = model.input_sparsifiers()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"file          {args.model}")
    print(f"written by    deltaconvert {header['deltaconvert_version']}, torch {header['torch_version']}")
    print(f"architecture  {model.conversion.get('architecture')}")
    if "weights" in model.conversion:
        print(f"weights       {model.conversion['weights']}")
    print(f"parameters    {_megabytes(parameters)}")
    print(f"buffers       {_megabytes(model.state_bytes())} of sequence state at "
          f"{args.batch}x3x{size[0]}x{size[1]} ({_megabytes(model.state_bytes() // args.batch)} per stream)")
    print(f"input         threshold {next(iter(inputs.values())).threshold if inputs else 0.0}, "
          f"dilation {next(iter(inputs.values())).dilation if inputs else 0}")
    islands = model.dense_islands
    print(f"dense islands {len(islands)}")
    for name, why in islands.items():
        print(f"  {name}: {why}")
    print(f"layers        {len(model.delta_ops())} delta ops ({len(thresholds)} with a threshold)")
    for name, op in model.delta_ops().items():
        threshold = f"{op.threshold:g}" if op.threshold is not None else "-"
        print(f"  {name:40s} {type(op).__name__:14s} threshold {threshold:>8s}  "
              f"state {_megabytes(op.state_bytes())}")
    return 0


# -- demo ----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .bench.demo import run_demo
    print(run_demo(size=args.input_size, max_frames=args.max_frames).report())
    return 0


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deltaconvert",
        description="Convert torchvision CNNs into delta models for video, tune their "
                    "thresholds, and run them.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = commands.add_parser(
        "convert", help="convert a torchvision architecture and checkpoint into a model file",
        description="Build a torchvision classification or segmentation architecture (never "
                    "downloading weights), load a checkpoint, convert it and save the delta model.")
    convert.add_argument("arch", help="torchvision builder name, e.g. resnet18, mobilenet_v2, "
                                      "deeplabv3_mobilenet_v3_large; or yolo, for an "
                                      "ultralytics checkpoint (--checkpoint best.pt)")
    weights = convert.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="state_dict (or a checkpoint holding one) "
                                                         "or a whole pickled model")
    weights.add_argument("--random-init", action="store_true",
                         help="no checkpoint: random weights (for trying things out)")
    convert.add_argument("--thresholds", type=Path, help="threshold YAML file")
    convert.add_argument("--input-size", type=input_size, default=(224, 224), metavar="HxW",
                         help="example input size used for conversion (default 224x224)")
    convert.add_argument("--num-classes", type=positive_int,
                         help="number of classes of the checkpoint's head, if not the default")
    convert.add_argument("-o", "--output", type=Path, required=True, help="model file to write "
                                                                          "(e.g. resnet18.delta.pt)")
    tail = convert.add_argument_group(
        "dense tail", "measure on a clip which suffix of the model runs faster dense than as "
                      "deltas, and convert with it forced dense (see deltaconvert.dense_tail)")
    tail.add_argument("--dense-tail", type=Path, metavar="VIDEO",
                      help="calibration clip of the deployment's kind (camera, scene)")
    tail.add_argument("--tail-frames", type=positive_int, default=12,
                      help="consecutive frames to measure (default 12, at least 5)")
    tail.add_argument("--tail-size", type=input_size, metavar="HxW",
                      help="frame size to measure at (default: the clip's own)")
    tail.add_argument("--tail-budget", type=positive_float, metavar="ERROR",
                      help="largest clip error (mean relative L2 of the outputs against the "
                           "dense model) a chosen tail may have (default: no limit)")
    tail.add_argument("--tail-dtype", choices=("fp16", "fp32"),
                      help="precision to measure in (default fp16 on a GPU, fp32 on a CPU)")
    tail.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda …")
    convert.set_defaults(handler=cmd_convert)

    run = commands.add_parser(
        "run", help="run a model file on videos, folders, globs, URLs or webcams",
        description="Run a model file on one or more video sources, each its own stream "
                    "(frames decoded in background threads, normalised on the device). "
                    "Writes frames.jsonl (one row per frame), outputs/<stream>/<frame>.pt, "
                    "<stream>.mp4 (work heatmap video) and summary.json into a new run folder: "
                    "-o DIR itself if it is missing or empty, else DIR2, DIR3, …. Streams "
                    "advance independently: each model call takes the streams with a frame "
                    "ready, so a slow source holds back no other and a source that ends "
                    "frees its slot while the others go on; so does a source that fails "
                    "while decoding (a camera that drops out): the others finish, the "
                    "summary names the error and the exit status is 1. Ctrl-C stops the run "
                    "and keeps what it did, with its summary.")
    run.add_argument("model", type=Path, help="model file from `deltaconvert convert`")
    run.add_argument("sources", nargs="+", metavar="SOURCE",
                     help="video file, directory, glob ('clips/*.mp4'), rtsp:// or http:// URL, "
                          "or webcam index (0); several sources run as several streams")
    run.add_argument("-o", "--output", type=Path, default=Path("runs/predict"), metavar="DIR",
                     help="run folder (default runs/predict; numbered if it holds files)")
    run.add_argument("--thresholds", type=Path, help="threshold YAML to apply before running")
    run.add_argument("--resize", "--input-size", dest="resize", type=input_size, metavar="HxW",
                     help="resize frames to HEIGHTxWIDTH (default: the model's input size "
                          "if it records one, else the source resolution)")
    run.add_argument("--letterbox", action="store_true",
                     help="keep the aspect ratio: fit inside --resize and pad with grey")
    run.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                     help="normalisation mean (default: the model's, else ImageNet)")
    run.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                     help="normalisation standard deviation (default: the model's, else ImageNet)")
    run.add_argument("--stride", type=positive_int, default=1, help="keep every STRIDE-th frame")
    run.add_argument("--start", type=non_negative_int, default=0, help="first frame to keep (default 0)")
    run.add_argument("--end", type=positive_int, help="stop before this frame number")
    run.add_argument("--max-frames", type=positive_int, help="stop after this many frames per stream")
    run.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1 …")
    run.add_argument("--no-heatmap", action="store_true", help="do not write heatmap videos")
    run.add_argument("--fps", type=positive_float,
                     help="frame rate of the heatmap videos (default: each source's own rate "
                          "divided by --stride; 25 for a source that states none)")
    run.add_argument("--no-outputs", action="store_true", help="do not write per-frame .pt outputs")
    run.add_argument("--compare-dense", action="store_true",
                     help="also run the dense model on every frame: its time and the error")
    run.set_defaults(handler=cmd_run)

    tune = commands.add_parser(
        "tune", help="tune per-layer thresholds on a video against an error budget",
        description="Front-to-back per-layer threshold calibration (see deltaconvert.tune): the "
                    "largest thresholds keeping the output's relative error against the dense "
                    "model within the budget on a calibration clip. Writes a threshold YAML.")
    tune.add_argument("model", type=Path, help="model file from `deltaconvert convert`")
    tune.add_argument("video", type=Path, help="calibration video")
    tune.add_argument("-o", "--output", type=Path, required=True, help="threshold YAML to write")
    tune.add_argument("--budget", type=positive_float, default=0.02,
                      help="allowed relative output error vs dense (default 0.02)")
    tune.add_argument("--aggregate", choices=("mean", "max"), default="mean",
                      help="error over the clip: mean or max over frames (default mean)")
    tune.add_argument("--frames", type=positive_int, default=12,
                      help="calibration frames from the start of the video (default 12)")
    tune.add_argument("--input-size", type=input_size, metavar="HxW",
                      help="resize frames (default: the video's size); thresholds carry over "
                           "to other sizes, so a reduced size tunes faster")
    tune.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda …")
    tune.set_defaults(handler=cmd_tune)

    bench = commands.add_parser(
        "bench", add_help=False, help="benchmark delta against dense inference "
                                      "(arguments go to the benchmark; see `bench --help`)")
    bench.set_defaults(handler=cmd_bench)  # main() hands it the raw arguments

    serve = commands.add_parser(
        "serve", help="serve a model file on Ray Serve: many streams per replica",
        description="Start a Ray Serve application: each replica owns one GPU (or CPU) and "
                    "SLOTS stream slots; a stream's frames are routed to one replica by "
                    "consistent hashing of its id (no fallback); concurrent frames on a "
                    "replica run as one batch. Needs pip install 'deltaconvert[serve]'. To "
                    "span GPUs and hosts, `ray start --head` on one node, `ray start "
                    "--address HEAD:6379` on the others, then run this with --address auto "
                    "and --replicas = the GPUs to use.")
    serve.add_argument("model", type=Path, help="model file from `deltaconvert convert`")
    serve.add_argument("--replicas", type=positive_int, default=1, help="replicas (GPUs) to run")
    serve.add_argument("--slots", type=positive_int, default=8, help="streams per replica")
    serve.add_argument("--device", default="auto", help="auto (a GPU per replica if any), cpu, cuda")
    serve.add_argument("--gpus-per-replica", type=float, help="default 1 with GPUs, else 0")
    serve.add_argument("--batch-wait-ms", type=positive_float, default=5.0,
                       help="how long a replica waits to fill a batch (default 5)")
    serve.add_argument("--idle-timeout", type=positive_float, default=300.0,
                       help="seconds after which a silent stream's slot is reused (default 300)")
    serve.add_argument("--thresholds", type=Path, help="threshold YAML to apply")
    serve.add_argument("--address", default=None,
                       help="Ray cluster to join (auto: the one `ray start` runs); default: a new local one")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1)")
    serve.add_argument("--port", type=positive_int, default=8000, help="HTTP port (default 8000)")
    serve.set_defaults(handler=cmd_serve)

    info = commands.add_parser("info", help="layers, thresholds, dense islands and memory of a model file")
    info.add_argument("model", type=Path, help="model file")
    info.add_argument("--input-size", type=input_size, metavar="HxW",
                      help="input size for the buffer memory (default: the conversion size)")
    info.add_argument("--batch", type=positive_int, default=1, metavar="N",
                      help="independent streams in one batch for the buffer memory (default 1)")
    info.set_defaults(handler=cmd_info)

    demo = commands.add_parser(
        "demo", help="MobileNetV2 (ImageNet) on a real clip: delta vs dense speed and error",
        description="Needs no arguments. GPU if available (full 720p clip), else the CPU "
                    "reference backend at a reduced resolution and frame count.")
    demo.add_argument("--input-size", type=input_size, metavar="HxW",
                      help="resize frames (default: 720p on a GPU, 144x256 on the CPU)")
    demo.add_argument("--max-frames", type=positive_int,
                      help="frames from the clip's start (default: all on a GPU, 24 on the CPU)")
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``deltaconvert`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every later argument, --help included, is the benchmark's
        args = argparse.Namespace(command="bench", handler=cmd_bench, bench_args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:  # the reader left (`deltaconvert info m | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return EXIT_ERROR
    except (DeltaConvertError, OSError) as error:
        print(f"deltaconvert {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"deltaconvert {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
