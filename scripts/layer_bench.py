"""One delta conv layer alone, fused into its activation as in a converted model,
against cuDNN's dense conv of the same shape: GPU µs per frame at several mask
densities, for reading one kernel's cost without the rest of a model.

More rows: ``dense (cuDNN) + activation``, what dense inference pays for the pair, and
``dense layer``, the engine's recomputation of the pair (cuDNN's conv of the input's
whole value, then the truncation kernel over every pixel, which writes the accumulator
only with ``DELTACONVERT_CUDA_DENSE_KEEP_ACC=1``: ``backends/cuda/dense_layers.py``),
whatever the plan would decide for this shape — once on the first frame's input (no
pixel emits) and once alternating with another (every pixel emits); a second table
gives the whole-map truncation's bytes per second next to the activation kernel's.

Masks are random pixels (``pixels:D``, each pixel updated with probability D) or random
8×8 tiles (``tiles:D``). A GEMM conv in fp16 runs as in a converted model, over a list of
its output pixels (``--rows listed``: ``conv_output_list``, then ``conv_gemm_listed``, or
its parts and their sum where K splits; the conv gets a work-list slot of a frame arena,
zeroed before each frame), or over the 8×8 tiles of its output
(``--rows tiled``: ``conv_gemm``, which a model runs only without list slots). Times
come from ``torch.profiler`` over ``--repeats`` calls after a warm-up, per kernel name;
the dense row is ``F.conv2d`` in the same dtype on channels_last input. Prints a table
and writes JSON (``--json``). Example (the depthwise conv of MobileNetV2's block 3 at
720p), and the same layer under Nsight Compute::

    python3 scripts/layer_bench.py --channels 144 --size 180x320
    ncu -k regex:'^conv_depthwise$' --launch-skip 10 --launch-count 1 --section SpeedOfLight \\
        --section InstructionStats python3 scripts/layer_bench.py --channels 144 \\
        --size 180x320 --densities pixels:1
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from deltaconvert.bench.data import parse_resolution
from deltaconvert.bench.runners import PRECISIONS
from deltaconvert.delta import Delta
from deltaconvert.files import write_text_atomic
from deltaconvert.ops.conv import Conv2d
from deltaconvert.ops.footprint import Footprint
from deltaconvert.ops.nonlinear import Nonlinear
from deltaconvert.timing import profiled

DEVICE = torch.device("cuda", 0)
ACTIVATIONS = {"relu6": nn.ReLU6, "relu": nn.ReLU, "hardswish": nn.Hardswish, "silu": nn.SiLU}


def kernel_us(fn, repeats: int) -> dict[str, float]:
    """GPU µs per call of ``fn`` by kernel name (torch.profiler, after a warm-up)."""
    from torch.autograd import DeviceType

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    with profiled(host=False) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    times: dict[str, list[float]] = defaultdict(list)
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            times[e.name[:60]].append(e.time_range.elapsed_us())
    return {name: sum(us) / repeats for name, us in times.items()}


EVERY_EMITTED = "dense layer, every pixel emitted"


def print_bandwidth(rows: list[dict], elements: int, size: int) -> None:
    """The whole-map truncation's bytes per second next to the activation's own kernel
    (``dense (cuDNN) + activation`` less the conv's kernels): both read the map and the
    truncation its sent values (2 · ``size`` bytes per element); the activation writes
    its output, the truncation its sent values and δ where a pixel emits (2 · ``size``
    more when every pixel does)."""
    kernels = {row["case"]: row["kernels"] for row in rows}
    conv = set(kernels["dense (cuDNN)"])
    activation = sum(us for name, us in kernels["dense (cuDNN) + activation"].items() if name not in conv)
    print("\n| kernel | µs | bytes per element | GB/s |\n|---|---|---|---|")
    lines = [("activation alone", activation, 2 * size)]
    for case, per_element in (("dense layer", 2 * size), (EVERY_EMITTED, 4 * size)):
        us = sum(t for name, t in kernels[case].items() if name.startswith("pw_truncate_whole"))
        lines.append((f"pw_truncate_whole ({case})", us, per_element))
    for label, us, per_element in lines:
        rate = f"{per_element * elements / us / 1e3:.0f}" if us else "–"
        print(f"| {label} | {us:.1f} | {per_element} | {rate} |")


def random_mask(kind: str, density: float, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """A (1, 1, H, W) mask of random pixels or of random 8×8 tiles."""
    if kind == "pixels":
        return torch.rand(1, 1, height, width, generator=gen, device=DEVICE) < density
    if kind != "tiles":
        raise SystemExit(f"layer_bench: error: mask kind {kind!r} is not pixels or tiles")
    tiles = torch.rand(1, 1, -(-height // 8), -(-width // 8), generator=gen, device=DEVICE) < density
    return tiles.repeat_interleave(8, 2).repeat_interleave(8, 3)[..., :height, :width].contiguous()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=144, help="input channels")
    parser.add_argument("--out-channels", type=int, help="default: --channels")
    parser.add_argument("--groups", type=int, help="default: --channels (depthwise)")
    parser.add_argument("--kernel", type=int, default=3)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--size", default="180x320", help="input HxW")
    parser.add_argument("--activation", default="relu6", choices=sorted(ACTIVATIONS))
    parser.add_argument("--threshold", type=float, default=0.02, help="the activation's τ")
    parser.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"))
    parser.add_argument("--densities", default="pixels:0,pixels:0.05,pixels:0.2,pixels:0.44,tiles:0.44,pixels:1",
                        help="comma-separated KIND:DENSITY, KIND pixels or tiles")
    parser.add_argument("--rows", default="listed", choices=("listed", "tiled"),
                        help="a GEMM conv's rows: a list of its output pixels (as in a model) or 8×8 tiles")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    from deltaconvert.backends.cuda.arena import FrameArena
    from deltaconvert.backends.cuda.binding import wrapper_for
    from deltaconvert.backends.cuda.dense_layers import DenseLayerPlan
    from deltaconvert.backends.cuda.device import device_runtime

    height, width = parse_resolution(args.size)
    dtype = PRECISIONS[args.dtype].dtype
    cout = args.out_channels or args.channels
    groups = args.groups or args.channels
    runtime = device_runtime(DEVICE)
    torch.manual_seed(0)
    conv = nn.Conv2d(args.channels, cout, args.kernel, args.stride, args.kernel // 2,
                     groups=groups).to(DEVICE, dtype)
    op = Conv2d(conv).to(DEVICE, dtype)
    act = Nonlinear(ACTIVATIONS[args.activation](), Footprint.POINTWISE, (True,), args.threshold)
    act = act.to(DEVICE, dtype)
    op.node_name, act.node_name = "conv", "activation"
    x = torch.randn(1, args.channels, height, width, device=DEVICE, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        act(op(x))  # the dense first frame: the activation's state
        act.accelerated = wrapper_for(act, runtime)
        op.accelerated = wrapper_for(op, runtime, (act, act.accelerated))
        # A plan that decides nothing: recompute() asks it whether to keep the accumulator.
        op.accelerated.plan = DenseLayerPlan(runtime, [])
        arena = FrameArena(runtime.device, 1)
        if args.rows == "listed":  # as bound in a model (backends/cuda/binding.py)
            op.accelerated.list_count = arena.slot(0)
            op.accelerated.arena = act.accelerated.arena = arena
        dense = kernel_us(lambda: conv(x), args.repeats)
        rows = [{"case": "dense (cuDNN)", "kernels": dense},
                {"case": "dense (cuDNN) + activation",
                 "kernels": kernel_us(lambda: act.fn(conv(x)), args.repeats)}]
        out_shape = conv(x).shape

        bias = op.accelerated.vectors.get(conv.bias)  # fetched outside the timed calls

        # The dense layer's input: the first frame's (nothing emits) or, alternately, a
        # second one (every pixel emits).
        inputs, calls = [x, torch.randn_like(x)], [0]

        def dense_layer(alternate: bool) -> None:
            calls[0] += alternate
            with runtime.frame():
                act(op.accelerated.recompute(op, inputs[calls[0] % 2], bias, dtype, out_shape))
        rows.append({"case": "dense layer", "kernels": kernel_us(lambda: dense_layer(False), args.repeats)})
        rows.append({"case": EVERY_EMITTED, "kernels": kernel_us(lambda: dense_layer(True), args.repeats)})
        # The delta rows continue the sequence: the accumulator the dense layer left stale
        # (unless it keeps accumulators) is restored first, as the plan does where the
        # delta kernels take over (else require_current refuses the next delta call).
        op.accelerated.plan.restore()
        gen = torch.Generator(device=DEVICE).manual_seed(1)
        for case in args.densities.split(","):
            kind, _, density = case.partition(":")
            d = Delta(x, random_mask(kind, float(density), height, width, gen))

            def frame() -> None:
                with runtime.frame():
                    arena.begin_frame()
                    act(op(d))
            rows.append({"case": case, "kernels": kernel_us(frame, args.repeats)})
    print(f"conv {args.channels}→{cout} k{args.kernel} s{args.stride} groups {groups} at "
          f"{height}×{width}, {args.dtype}, {args.activation} τ={args.threshold}")
    print("\n| case | kernel | µs per frame |\n|---|---|---|")
    for row in rows:
        for name, us in row["kernels"].items():
            print(f"| {row['case']} | {name} | {us:.1f} |")
        print(f"| {row['case']} | (sum) | {sum(row['kernels'].values()):.1f} |")
    print_bandwidth(rows, math.prod(out_shape), torch.finfo(dtype).bits // 8)
    if args.json:
        write_text_atomic(args.json, json.dumps({"args": vars(args) | {"json": str(args.json)},
                                                 "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    # Exit without the interpreter's teardown: on the H200 the process has hung in it
    # (after its atexit handlers, in C/C++ teardown) after every run since PERF_NOTES
    # §42 e, with its table printed and its JSON written; one profiler session instead
    # of one per case did not change that (§53 h). Nothing is left to flush but stdio.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
