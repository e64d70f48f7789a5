"""A quick speed probe of the CUDA backend (not the benchmark of
``deltaconvert bench``): median ms per frame, batch 1, synthetic static-camera clip,
threshold 0, dense baselines and delta models measured in the same process, timed by the
benchmark's harness (deltaconvert.bench.timing).

    python scripts/speed_probe.py [--height 720 --width 1280 --frames 30] [--json PATH]

Prints a markdown table; ``--json`` also writes the rows.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import warnings

import torch

from deltaconvert.architectures import build_architecture, calibrate_batch_norm
from deltaconvert.bench.timing import GraphReplay
from deltaconvert.timing import frame_times, profiled
from deltaconvert.convert import convert
from deltaconvert.synthetic import synthetic_video

DEVICE = torch.device("cuda", 0)


def time_frames(fn, frames, warm: int) -> float:
    """Median milliseconds per call over the frames after the first ``warm``."""
    return statistics.median(frame_times(fn, frames, DEVICE)[warm:])


def probe(name: str, frames: list, rows: list, profile: bool) -> None:
    torch.manual_seed(0)
    model = calibrate_batch_norm(build_architecture(name).to(DEVICE), frames[:2])
    for dtype, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
        xs = [f.to(dtype) for f in frames]
        dense = copy.deepcopy(model).to(dtype).to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        with torch.no_grad():
            rows.append((name, label, "dense eager (cuDNN)", time_frames(dense, xs, 5), None))
            replay = GraphReplay(dense, xs[0])
        rows.append((name, label, "dense CUDA graph (cuDNN)", time_frames(replay, xs, 5), None))
        variants = (("delta reference + graph", "reference", True, 0.0, True),
                    ("delta cuda", "cuda", False, 0.0, True),
                    ("delta cuda + graph", "cuda", True, 0.0, True),
                    ("delta cuda + graph, no stats", "cuda", True, 0.0, False),
                    ("delta cuda + graph, τ=0.05", "cuda", True, 0.05, True))
        for label_v, backend, graph, tau, stats in variants:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                delta = convert(model, frames[0], backend=backend, cuda_graph=graph,
                                thresholds=tau).to(dtype)
            for op in delta.delta_ops().values():
                op.track_stats = stats
            ms = time_frames(delta, xs, 5)
            work = delta.stats().get("work_fraction_mean") if stats else None
            rows.append((name, label, label_v, ms, work))
            if profile and label_v == "delta cuda":
                kernel_profile(delta, xs[-3:], f"{name} {label}")


def kernel_profile(model, frames: list, title: str) -> None:
    """GPU time per kernel name over a few eager delta frames (torch.profiler/CUPTI)."""
    with profiled(host=False) as prof:
        for x in frames:
            model(x)
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None)
        if us is None:
            us = getattr(event, "self_cuda_time_total", 0.0)
        if us:
            totals[event.key] = totals.get(event.key, 0.0) + us
    grand = sum(totals.values()) or 1.0
    print(f"\nkernel time per frame, {title} (eager, threshold 0): {grand / len(frames) / 1000:.2f} ms")
    for key, us in sorted(totals.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {us / len(frames) / 1000:7.3f} ms  {100 * us / grand:5.1f} %  {key[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--json")
    parser.add_argument("--profile", action="store_true", help="print GPU time per kernel")
    args = parser.parse_args()
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    frames = [f.to(DEVICE) for f in synthetic_video(args.frames, args.height, args.width, seed=5)]
    rows: list = []
    for name in args.models:
        probe(name, frames, rows, args.profile)
    print(f"\n{torch.cuda.get_device_name()} | {args.height}×{args.width}, batch 1, "
          f"{args.frames} frames (median after 5), threshold 0, TF32 off\n")
    print("| model | dtype | variant | ms/frame | work fraction |\n|---|---|---|---|---|")
    for name, label, variant, ms, work in rows:
        print(f"| {name} | {label} | {variant} | {ms:.2f} | {'' if work is None else f'{work:.3f}'} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(("model", "dtype", "variant", "ms", "work_fraction"), r)) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
