"""Where one delta frame spends its GPU time, per kernel launch, next to the
dense model's kernels on the same frames.

A benchmark model (``--model``, built as ``deltaconvert bench`` builds it) on a benchmark
clip (``--clip static|bigbuckbunny|scenecut``, ``--resolution``), batch 1, CUDA backend
with CUDA-graph replay and statistics off, as the benchmark's timed pass runs it
(``--statistics``: on, the converted model's default, as the unchanged-frame target is
measured). Per
dtype:

* ms per frame (CUDA events, median) of *clip* frames at a uniform threshold τ (the
  input Sparsify's ``--input-tau``, by default τ too), and of
  an *empty* frame (the last frame fed again: the input delta is 0, every mask is
  empty, so whatever an empty frame costs does not scale with the updated area);
* GPU time per kernel launch of both, from ``torch.profiler`` over graph replays,
  attributed to layers by the launch sequence of an eager delta frame after the first (whose
  dense layers are decided: see backends/cuda/dense_layers.py), and
  summed per stage (the first two parts of the layer name). With
  ``DELTACONVERT_CUDA_PDL=1`` replayed kernels launch as programmatic dependent launches
  (backends/cuda/dependent_launch.py): a kernel's time starts while it waits for its
  predecessor, so the times overlap and their sum exceeds the frame;
* the dense model's CUDA-graph replay in the same precision (TF32 off): ms per frame
  and GPU time per kernel name, so each kind of work can be set against its dense cost;
* the work fraction and each layer's updated fraction of the clip frames;
* the host side of a replayed empty frame: median µs for a call to return, each call
  started on an idle device (timing.host_times), and the functions that take it
  (cProfile around each call alone, self time per frame, so
  the Python layers' share is inflated by the profiler; C calls such as the graph
  launch are measured as they are).

    python3 scripts/profile_frame.py [--model mobilenet_v2] [--clip static] \
        [--resolution 720x1280] [--tau 0.05] [--input-tau T] [--dtypes fp32,fp16] [--json PATH]
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

from deltaconvert.backends.cuda import dependent_launch
from deltaconvert.backends.cuda import kernels as cuda_kernels
from deltaconvert.bench.data import (
    clip_path,
    decode_rgb,
    default_data_dir,
    parse_resolution,
    scene_cut_frames,
    to_frames,
)
from deltaconvert.bench.models import MODELS, build_model
from deltaconvert.bench.runners import PRECISIONS, DenseRunner
from deltaconvert.convert import convert
from deltaconvert.files import write_text_atomic
from deltaconvert.thresholds import ThresholdConfig
from deltaconvert.timing import frame_times, host_times, profiled

DEVICE = torch.device("cuda", 0)


def record_launches(model, frame) -> list[tuple[str, str, tuple]]:
    """(layer, kernel, grid) of every backend launch of one eager frame, in order."""
    with cuda_kernels.recorded_launches() as launches:
        model(frame)
    return launches


def median_ms(model, frames) -> float:
    """Median milliseconds per frame (CUDA events, as the benchmark's timed pass)."""
    return statistics.median(frame_times(model, frames, DEVICE))


def kernel_times(model, frames) -> list[tuple[str, float]]:
    """(kernel name, µs) of each kernel of one frame, averaged over ``frames``."""
    from torch.autograd import DeviceType

    with profiled(host=False) as prof:
        for x in frames:
            model(x)
        torch.cuda.synchronize()
    kernels = sorted((e for e in prof.events() if e.device_type == DeviceType.CUDA
                      and not e.name.startswith(("Memcpy", "Memset"))),
                     key=lambda e: e.time_range.start)
    per = len(kernels) // len(frames)
    # Each replay also copies the input in and the outputs out (torch kernels, counted).
    if per * len(frames) != len(kernels):
        raise RuntimeError(f"{len(kernels)} kernels over {len(frames)} frames")
    return [(kernels[i].name, statistics.mean(kernels[i + f * per].time_range.elapsed_us()
                                              for f in range(len(frames)))) for i in range(per)]


def attribute(times, launches) -> list[dict]:
    """Kernel times labelled with the layer and grid of the matching backend launch."""
    ours = {name for _, name, _ in launches}
    queue = iter(launches)
    rows = []
    for name, us in times:
        if name in ours:
            layer, launched, grid = next(queue)
            if launched != name:
                raise RuntimeError(f"launch order mismatch: {launched} vs {name}")
            rows.append({"layer": layer, "kernel": name, "grid": grid, "us": us})
        else:
            rows.append({"layer": "(torch)", "kernel": name[:40], "grid": None, "us": us})
    return rows


def host_profile(model, frames, top: int = 12) -> dict:
    """The host side of ``model`` on ``frames``: median µs per call, and the ``top``
    functions by self time per call (cProfile around each call alone); every call starts
    on an idle device, so no call waits for a full launch queue."""
    import cProfile
    import pstats

    host_us = statistics.median(host_times(model, frames, DEVICE)) * 1e3
    profiler = cProfile.Profile()
    for x in frames:
        torch.cuda.synchronize()
        profiler.enable()
        model(x)
        profiler.disable()
    torch.cuda.synchronize()
    entries = pstats.Stats(profiler).stats.items()  # (file, line, name) -> (cc, nc, tt, ct, callers)
    rows = sorted(entries, key=lambda kv: -kv[1][2])[:top]
    return {"host_us": host_us, "functions": [
        {"function": f"{Path(file).name}:{line}({name})", "calls": nc / len(frames),
         "self_us": tt / len(frames) * 1e6} for (file, line, name), (_, nc, tt, _, _) in rows]}


def profile_dense(base, frames, label: str, repeats: int) -> dict:
    """The dense model's CUDA graph in this precision: ms per frame and kernel times."""
    runner = DenseRunner(base, PRECISIONS[label], "graph", DEVICE)  # calls set mode and TF32 flags
    for x in frames[:2]:
        runner(x)
    ms = median_ms(runner, frames[2:])
    kernels = kernel_times(runner, frames[-repeats:])
    return {"ms": ms, "kernels": [{"kernel": name[:60], "us": us} for name, us in kernels]}


def profile_delta(base, frames, label: str, tau: float, input_tau: float, repeats: int,
                  statistics_on: bool) -> dict:
    dtype = PRECISIONS[label].dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(base, torch.randn(1, 3, 64, 64), backend="cuda", cuda_graph=True,
                        thresholds=ThresholdConfig(default=tau, input_threshold=input_tau))
    model = model.to(device=DEVICE, dtype=dtype, memory_format=torch.channels_last)
    xs = [f.to(DEVICE, dtype).contiguous(memory_format=torch.channels_last) for f in frames]
    with torch.no_grad():
        model.track_stats = True
        model.cuda_graph = False
        model(xs[0])                                   # dense first frame
        model(xs[1])                                   # the first delta frame (plans layers)
        launches = record_launches(model, xs[2])       # an eager delta frame as replayed
        for x in xs[3:]:
            model(x)
        stats = model.stats()
        model.cuda_graph = True
        model.track_stats = statistics_on              # off: as in the benchmark's timed pass
        model.reset()
        for x in xs[:3]:
            model(x)                                   # dense, eager delta, capture
        clip = xs[3:]
        clip_ms = median_ms(model, clip)
        clip_kernels = attribute(kernel_times(model, clip[-repeats:]), launches)
        empty = [xs[-1]] * (repeats + 2)
        model(xs[-1])
        empty_ms = median_ms(model, empty)
        empty_kernels = attribute(kernel_times(model, empty[:repeats]), launches)
        host = host_profile(model, empty * 4)
    model.to("cpu")
    layers = {name: entry.get("updated_last") for name, entry in stats["layers"].items()}
    return {"dtype": label, "tau": tau, "input_tau": input_tau, "clip_ms": clip_ms,
            "empty_ms": empty_ms,
            "work_fraction": stats["work_fraction_last"], "layers_updated": layers,
            "clip_kernels": clip_kernels, "empty_kernels": empty_kernels, "empty_host": host}


def totals(rows, key) -> dict[Any, tuple[int, float]]:
    """Launch count and µs summed over rows with the same ``key(row)``, largest first."""
    sums: dict[str, list] = {}
    for r in rows:
        t = sums.setdefault(key(r), [0, 0.0])
        t[0] += 1
        t[1] += r["us"]
    return dict(sorted(((k, (n, us)) for k, (n, us) in sums.items()), key=lambda kv: -kv[1][1]))


def stage(row) -> str:
    return ".".join(row["layer"].split(".")[:2])


def print_report(result: dict, dense: dict, top: int) -> None:
    label, clip, empty = result["dtype"], result["clip_kernels"], result["empty_kernels"]
    clip_sum, empty_sum = sum(r["us"] for r in clip), sum(r["us"] for r in empty)
    dense_sum = sum(r["us"] for r in dense["kernels"])
    print(f"\n## {label}, τ={result['tau']} (input {result['input_tau']}): "
          f"clip frame {result['clip_ms']:.3f} ms "
          f"(work fraction {result['work_fraction']:.3f}), empty frame {result['empty_ms']:.3f} ms, "
          f"dense graph {dense['ms']:.3f} ms; kernels {len(clip)} (dense {len(dense['kernels'])}), "
          f"GPU kernel time clip {clip_sum / 1e3:.3f} ms, empty {empty_sum / 1e3:.3f} ms, "
          f"dense {dense_sum / 1e3:.3f} ms"
          + (" (delta kernel times overlap: dependent launches are on)" if dependent_launch.ENABLED
             else ""))
    empty_totals = totals(empty, lambda r: r["kernel"])
    print("\n| delta kernel | launches | clip µs | empty µs |\n|---|---|---|---|")
    for kernel, (n, us) in totals(clip, lambda r: r["kernel"]).items():
        print(f"| {kernel} | {n} | {us:.1f} | {empty_totals.get(kernel, (0, 0.0))[1]:.1f} |")
    print("\n| dense kernel | launches | µs |\n|---|---|---|")
    for kernel, (n, us) in list(totals(dense["kernels"], lambda r: r["kernel"]).items())[:top]:
        print(f"| {kernel} | {n} | {us:.1f} |")
    print("\n| stage | launches | clip µs | empty µs |\n|---|---|---|---|")
    empty_stages = totals(empty, stage)
    for name, (n, us) in totals(clip, stage).items():
        print(f"| {name} | {n} | {us:.1f} | {empty_stages.get(name, (0, 0.0))[1]:.1f} |")
    host = result["empty_host"]
    print(f"\nhost side of a replayed empty frame: {host['host_us']:.0f} µs per call "
          "(each on an idle device); self time per frame under cProfile:")
    print("\n| function | calls per frame | self µs per frame |\n|---|---|---|")
    for f in host["functions"]:
        print(f"| {f['function']} | {f['calls']:.1f} | {f['self_us']:.1f} |")
    updated = result["layers_updated"]
    print("\n| layer | kernel | grid | clip µs | empty µs | updated |\n|---|---|---|---|---|---|")
    # The skip runs fewer kernels on the empty frame: match by (layer, kernel), per launch.
    empty_by_launch = totals(empty, lambda r: (r["layer"], r["kernel"]))
    for r in sorted(clip, key=lambda r: -r["us"])[:top]:
        n, us = empty_by_launch.get((r["layer"], r["kernel"]), (1, 0.0))
        e_us = us / n
        frac = updated.get(r["layer"])
        print(f"| {r['layer']} | {r['kernel']} | {r['grid']} | {r['us']:.1f} | {e_us:.1f} | "
              f"{'' if frac is None else f'{frac:.3f}'} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2", choices=MODELS)
    parser.add_argument("--clip", default="static", help="static, bigbuckbunny or scenecut")
    parser.add_argument("--resolution", default="720x1280")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="clips and weights staged here are used first (default: as "
                        "deltaconvert bench)")
    parser.add_argument("--frames", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=5, help="profiled replays")
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--input-tau", type=float,
                        help="the input Sparsify's threshold (default: --tau)")
    parser.add_argument("--dtypes", default="fp32,fp16")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--statistics", action="store_true",
                        help="time the delta model with statistics on (default: off)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    source = "static" if args.clip == "scenecut" else args.clip
    rgb = decode_rgb(clip_path(source, args.data_dir), args.frames)
    height, width = parse_resolution(args.resolution)
    frames = to_frames(rgb, height, width, DEVICE)
    if args.clip == "scenecut":
        frames = scene_cut_frames(frames)
    base = build_model(args.model, args.data_dir, [f.cpu() for f in frames[:4]])
    results = []
    for label in args.dtypes.split(","):
        results.append((profile_delta(base, frames, label, args.tau,
                                      args.tau if args.input_tau is None else args.input_tau,
                                      args.repeats, args.statistics),
                        profile_dense(base, frames, label, args.repeats)))
    print(f"\n{torch.cuda.get_device_name()} | {args.model} | {args.clip} {tuple(frames[0].shape)} | "
          f"graph replay, statistics {'on' if args.statistics else 'off'}")
    for result, dense in results:
        print_report(result, dense, args.top)
    if args.json:
        write_text_atomic(args.json, json.dumps([{"delta": r, "dense": d} for r, d in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
