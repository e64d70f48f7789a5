"""How much of what a tiled delta convolution pays for is candidates: per conv of a
benchmark model on a benchmark clip, the fraction of its output pixels that are
candidates (their footprint touches an updated input pixel) and the fraction of the 8×8
output tiles (``--tile``) that hold at least one (what a kernel over tiles computes).

The masks come from the reference backend (CPU or GPU), so no CUDA kernel is involved:
the candidate mask of a conv is its input mask dilated by the kernel's footprint, as
``ops/conv.py`` defines it. Statistics are averaged over the delta frames after
``--skip`` (the first ones after the dense frame are atypical). Prints a table and
writes JSON (``--json``). Example (PERF_NOTES §39 b)::

    python3 scripts/tile_activity.py --model mobilenet_v2 --tau 0.05 --frames 12
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from deltaconvert.bench.data import clip_path, decode_rgb, default_data_dir, parse_resolution, to_frames
from deltaconvert.bench.models import MODELS, build_model
from deltaconvert.convert import convert
from deltaconvert.delta import Delta
from deltaconvert.files import write_text_atomic
from deltaconvert.ops.conv import Conv2d
from deltaconvert.thresholds import ThresholdConfig

TILE = 8  # the CUDA backend's conv tile (backends/cuda/constants.py)


def candidates(mask: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """The output pixels of ``conv`` whose footprint touches a set pixel of ``mask``
    (``(N, 1, H, W)`` or per channel), as a ``(N, 1, OH, OW)`` bool tensor."""
    pixels = mask.reshape(mask.shape[0], -1, *mask.shape[-2:]).amax(1, keepdim=True).float()
    pixels = F.pad(pixels, conv._reversed_padding_repeated_twice)  # (asymmetric) zero padding
    ones = torch.ones(1, 1, *conv.weight.shape[2:], device=mask.device)
    return F.conv2d(pixels, ones, stride=conv.stride, dilation=conv.dilation) > 0


def tile_fraction(mask: torch.Tensor, tile: int = TILE) -> float:
    """The fraction of ``tile`` × ``tile`` tiles of a ``(N, 1, H, W)`` mask (partial tiles
    at the edges included) that hold a set pixel."""
    return F.max_pool2d(mask.float(), tile, tile, ceil_mode=True).mean().item()


def tile_activity(model: torch.nn.Module, frames: list[torch.Tensor], skip: int,
                  tile: int = TILE) -> dict[str, dict]:
    """Per Conv2d op of the delta model ``model`` (by node name): its weight shape, output
    size, and the mean candidate and ``tile`` × ``tile`` tile fractions over the delta
    frames after the first ``skip`` of ``frames`` (the first frame is the dense one)."""
    seen: dict[str, list[tuple[float, float]]] = {}
    shapes: dict[str, dict] = {}

    def record(op: Conv2d, args: tuple, _out) -> None:
        if not isinstance(args[0], Delta):
            return
        cand = candidates(args[0].mask, op.conv)
        seen.setdefault(op.node_name, []).append((cand.float().mean().item(), tile_fraction(cand, tile)))
        shapes[op.node_name] = {"weight": list(op.conv.weight.shape), "out": list(cand.shape[-2:])}

    hooks = [op.register_forward_hook(record) for op in model.modules() if isinstance(op, Conv2d)]
    try:
        with torch.no_grad():
            for frame in frames:
                model(frame)
    finally:
        for hook in hooks:
            hook.remove()
    result = {}
    for name, values in seen.items():
        kept = values[skip:] or values
        result[name] = {**shapes[name],
                        "candidates": sum(c for c, _ in kept) / len(kept),
                        "tiles": sum(t for _, t in kept) / len(kept)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, default="mobilenet_v2")
    parser.add_argument("--clip", default="static", help="static, bigbuckbunny or a video file")
    parser.add_argument("--resolution", default="720x1280")
    parser.add_argument("--tau", type=float, default=0.05,
                        help="threshold of every layer and of the input")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--skip", type=int, default=2, help="delta frames left out of the means")
    parser.add_argument("--tile", type=int, default=TILE, help="tile side (the kernels': 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    height, width = parse_resolution(args.resolution)
    device = torch.device(args.device)
    frames = to_frames(decode_rgb(clip_path(args.clip, data_dir), args.frames), height, width, device)
    base = build_model(args.model, data_dir, [f.cpu() for f in frames[:4]]).to(device)
    model = convert(base, frames[0], backend="reference",  # τ everywhere, as bench.py's sweep
                    thresholds=ThresholdConfig(default=args.tau, input_threshold=args.tau))
    rows = tile_activity(model, frames, args.skip, args.tile)
    print(f"{args.model} · {args.clip} · {height}×{frames[0].shape[-1]} · τ={args.tau} · "
          f"{len(frames) - 1 - args.skip} delta frames")
    print(f"\n| conv | weight | output | candidates | {args.tile}×{args.tile} tiles |\n|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {tuple(row['weight'])} | {row['out'][0]}×{row['out'][1]} | "
              f"{row['candidates']:.3f} | {row['tiles']:.3f} |")
    if args.json:
        write_text_atomic(args.json, json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                 "convs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
