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
    height, width = args.input_size
    delta = convert(model, torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)),
                    thresholds=thresholds, architecture=args.arch)
    delta.conversion.update({"weights": weights, "input_size": [height, width]})
    save(delta, args.output)
    print(f"converted {args.arch} ({len(delta.delta_ops())} delta ops, {len(delta.thresholds)} "
          f"thresholds, {len(delta.dense_islands)} dense islands) → {args.output}")
    return 0


# -- run -----------------------------------------------------------------------------------
def _storable(output: Any) -> Any:
    """A model output for outputs.pt: on the CPU; (N, C, H, W) maps as per-pixel argmax."""
    from .delta import map_tensor_leaves

    def store(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu()
        if tensor.dim() == 4:
            return tensor.argmax(dim=1).to(torch.uint8 if tensor.shape[1] <= 256 else torch.int32)
        return tensor
    return map_tensor_leaves(output, store)


def cmd_run(args: argparse.Namespace) -> int:
    import contextlib
    import io

    from tqdm import tqdm

    from .bench.timing import timed
    from .files import write_bytes_atomic, write_text_atomic
    from .heatmap import UpdateRecorder, heatmap_png
    from .video import iter_frames, to_rgb_image, video_info
    directory = check_output_directory(args.output, "-o")
    device = _device(args.device)
    model = _load_model(args.model, device, args.thresholds)
    info = video_info(args.video)  # fails early and clearly for missing or undecodable files
    heatmaps = directory / "updates"
    total = min(filter(None, (info.frames, args.max_frames)), default=None)
    outputs, times, work = [], [], []
    with contextlib.ExitStack() as stack:
        recorder = None if args.no_heatmap else stack.enter_context(UpdateRecorder(model))
        frames = iter_frames(args.video, size=args.input_size, max_frames=args.max_frames)
        for index, frame in enumerate(tqdm(frames, desc="run", unit="frame", total=total)):
            output, milliseconds = timed(device, model, frame.to(device))
            times.append(milliseconds)
            outputs.append(_storable(output))
            if index == 0:
                size = tuple(frame.shape[-2:])
                continue
            work.append(model.stats()["work_fraction_last"])
            heat = recorder.work_map(size) if recorder is not None else None
            if heat is not None:
                heatmaps.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(heatmaps / f"frame_{index:05d}.png",
                                   heatmap_png(to_rgb_image(frame[0]), heat[0]))
    buffer = io.BytesIO()
    torch.save(outputs, buffer)
    directory.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(directory / "outputs.pt", buffer.getvalue())
    delta_ms = statistics.median(times[1:] or times)
    known_work = [w for w in work if w is not None]
    summary = {
        "model": str(args.model), "video": str(args.video), "frames": len(times),
        "resolution": list(size), "device": str(device), "backend": model.active_backend,
        "first_frame_ms": times[0], "delta_ms_median": delta_ms, "delta_fps": 1000 / delta_ms,
        "work_fraction_mean": statistics.fmean(known_work) if known_work else None,
        "work_fraction_per_frame": work, "ms_per_frame": times,
    }
    write_text_atomic(directory / "summary.json", json.dumps(summary, indent=2))
    work_text = ("" if summary["work_fraction_mean"] is None
                 else f", work fraction {summary['work_fraction_mean']:.3f}")
    print(f"{len(times)} frames at {size[0]}x{size[1]} on {device} ({model.active_backend} "
          f"backend): {1000 / delta_ms:.1f} fps on delta frames ({delta_ms:.1f} ms/frame; first, "
          f"dense frame {times[0]:.1f} ms){work_text}")
    print(f"wrote {directory / 'outputs.pt'}, {directory / 'summary.json'}"
          + ("" if recorder is None else f", heatmaps in {heatmaps}"))
    return 0


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
    convert.set_defaults(handler=cmd_convert)

    run = commands.add_parser(
        "run", help="run a model file on a video: fps, outputs, update heatmaps",
        description="Run a converted model on every frame of a video. Writes DIR/summary.json "
                    "(timings, work fraction per frame), DIR/outputs.pt (per-frame outputs on "
                    "the CPU; (N, C, H, W) outputs as per-pixel argmax class maps) and "
                    "DIR/updates/frame_NNNNN.png (where each delta frame did its work).")
    run.add_argument("model", type=Path, help="model file from `deltaconvert convert`")
    run.add_argument("video", type=Path, help="video file")
    run.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                     help="output directory (created if needed)")
    run.add_argument("--thresholds", type=Path, help="threshold YAML to apply before running")
    run.add_argument("--input-size", type=input_size, metavar="HxW",
                     help="resize frames (default: the video's size)")
    run.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    run.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1 …")
    run.add_argument("--no-heatmap", action="store_true", help="do not write heatmap PNGs")
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
