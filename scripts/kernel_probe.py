"""Eager delta frames of a benchmark model, for a kernel profiler such as Nsight Compute.

Runs the dense first frame and ``--frames`` eager delta frames (CUDA backend, statistics
off, no CUDA graph, so every kernel is its own launch), and prints the launches of one
delta frame in order — layer, kernel, grid — with each launch's index among the
launches of the same kernel name over the whole run, which is what ``ncu --launch-skip``
counts with a ``-k`` filter. Example (the third conv_gemm of the fourth delta frame)::

    python3 scripts/kernel_probe.py --frames 4            # read the index from the table
    ncu --clock-control none -k regex:'^conv_gemm$' --launch-skip 107 --launch-count 1 \\
        --section SpeedOfLight --section Occupancy --section WarpStateStats \\
        python3 scripts/kernel_probe.py --frames 4 --quiet
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections import Counter
from pathlib import Path

import torch

from deltaconvert.backends.cuda import kernels as cuda_kernels
from deltaconvert.bench.data import clip_path, decode_rgb, default_data_dir, parse_resolution, to_frames
from deltaconvert.bench.models import MODELS, build_model
from deltaconvert.bench.runners import PRECISIONS
from deltaconvert.convert import convert
from deltaconvert.thresholds import ThresholdConfig

DEVICE = torch.device("cuda", 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", choices=MODELS)
    parser.add_argument("--clip", default="static", help="static or bigbuckbunny")
    parser.add_argument("--resolution", default="720x1280")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--frames", type=int, default=4, help="eager delta frames")
    parser.add_argument("--tau", type=float, default=0.02)
    parser.add_argument("--dtype", default="fp16", choices=sorted(PRECISIONS))
    parser.add_argument("--quiet", action="store_true", help="print no launch table")
    args = parser.parse_args(argv)
    height, width = parse_resolution(args.resolution)
    frames = to_frames(decode_rgb(clip_path(args.clip, args.data_dir), args.frames + 1),
                       height, width, DEVICE)
    base = build_model(args.model, args.data_dir, [f.cpu() for f in frames[:4]])
    dtype = PRECISIONS[args.dtype].dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(base, torch.randn(1, 3, 64, 64), backend="cuda",
                        thresholds=ThresholdConfig(default=args.tau, input_threshold=args.tau))
    model = model.to(device=DEVICE, dtype=dtype, memory_format=torch.channels_last)
    model.track_stats = False
    xs = [f.to(DEVICE, dtype).contiguous(memory_format=torch.channels_last) for f in frames]
    launches: list[tuple[int, str, str, tuple]] = []
    seen: Counter = Counter()
    original = cuda_kernels.Kernel.__call__

    def spy(self, grid, block, kernel_args):
        if all(g > 0 for g in grid):
            launches.append((seen[self.name], kernel_args.layer, self.name, tuple(grid)))
            seen[self.name] += 1
        return original(self, grid, block, kernel_args)

    cuda_kernels.Kernel.__call__ = spy
    try:
        with torch.no_grad():
            for index, x in enumerate(xs):
                start = len(launches)
                model(x)
                if index == len(xs) - 1:
                    last = launches[start:]
        torch.cuda.synchronize()
    finally:
        cuda_kernels.Kernel.__call__ = original
    if not args.quiet:
        print(f"launches of delta frame {len(xs) - 1} (index: among launches of that kernel)")
        print("| index | layer | kernel | grid |\n|---|---|---|---|")
        for index, layer, name, grid in last:
            print(f"| {index} | {layer} | {name} | {grid} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
