#!/usr/bin/env python3
"""Many streams through one StreamPool (issue 13): throughput, per-stream latency and
memory per stream, against the dense model in fp16 at the same batch.

    python scripts/bench_streams.py                       # 1, 8, 32 streams, mobilenet_v2
    python scripts/bench_streams.py --streams 8 --size 720x1280 --arch resnet50
    python scripts/bench_streams.py --help

For each stream count N: a pool of N slots runs ``--frames`` steps. Streams join and
leave: each stream lives ``--lifetime`` frames (start times staggered), then leaves, and
a new stream (a new clip offset, so a dense first frame) takes its slot. Every step
gives each live stream its next frame (one batched call). Measured per step, with the
device synchronised: wall time (= the latency of every stream's frame in it) and
throughput (stream-frames per second); then the dense baseline users run: the original
model in fp16, channels_last, replayed from a CUDA graph (on a GPU), on batches of N
frames. Memory: the model's state bytes per stream, and the peak
device memory of the pool run (model, state, activations) over N.

Runs from a checkout without installing the package and without Ray; prints a table
and writes JSON (``--json``).
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--arch", default="mobilenet_v2", help="torchvision builder (random weights)")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--frames", type=int, default=60, help="steps per stream count")
    parser.add_argument("--lifetime", type=int, default=20,
                        help="frames a stream lives before it leaves and a new one joins")
    parser.add_argument("--size", type=parse_size, default=(360, 640), help="HxW (default 360x640)")
    parser.add_argument("--threshold", type=float, default=0.05, help="every layer's threshold")
    parser.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16",
                        help="delta model precision (the dense baseline is always fp16)")
    parser.add_argument("--backend", choices=("auto", "cuda", "reference"), default="auto")
    parser.add_argument("--cuda-graph", action="store_true", help="replay delta frames as a CUDA graph")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu for a smoke run")
    parser.add_argument("--json", type=Path, default=Path("bench_streams.json"), help="JSON output")
    return parser


def clip(frames: int, size: tuple[int, int], offset: int, device, dtype) -> list[torch.Tensor]:
    """A static-camera clip (deltaconvert.synthetic) starting ``offset`` frames in."""
    from deltaconvert.synthetic import synthetic_video
    video = synthetic_video(frames + offset, *size, batch=1, seed=offset % 7)
    return [f.to(device, dtype) for f in video[offset:]]


def run(args: argparse.Namespace, count: int, device: torch.device) -> dict:
    import torchvision

    from deltaconvert import StreamPool, convert
    from deltaconvert.bench.timing import GraphReplay
    from deltaconvert.timing import synchronize
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    torch.manual_seed(0)
    net = torchvision.models.get_model(args.arch, weights=None).eval().to(device)
    example = torch.randn(1, 3, *args.size, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert(net.to(dtype), example.to(dtype), thresholds=args.threshold,
                        backend=args.backend, cuda_graph=args.cuda_graph)
    model.track_stats = False
    # The dense baseline users run: fp16, channels_last, replayed from a CUDA graph on a GPU.
    dense = copy.deepcopy(net).half().to(memory_format=torch.channels_last)
    pool_clips = [clip(args.lifetime, args.size, i, device, dtype) for i in range(count + 4)]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base_memory = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    pool = StreamPool(model, slots=count)
    # The first streams start at staggered points of their clips, so that streams leave
    # and join throughout the run; every stream's first frame in the pool is dense.
    age = {f"s{i}": i * args.lifetime // count for i in range(count)}
    next_id = count
    step_ms, dense_ms, joins = [], [], 0
    with torch.inference_mode():
        for _ in range(args.frames):
            frames = {}
            for stream in list(age):
                if age[stream] >= args.lifetime:  # leaves; a new stream joins its slot
                    pool.release(stream)
                    del age[stream]
                    stream = f"s{next_id}"
                    next_id += 1
                    age[stream] = 0
                    joins += 1
                frames[stream] = pool_clips[int(stream[1:]) % len(pool_clips)][age[stream]]
                age[stream] += 1
            synchronize(device)
            began = time.perf_counter()
            pool.step(frames)
            synchronize(device)
            step_ms.append((time.perf_counter() - began) * 1000)
    peak = torch.cuda.max_memory_allocated(device) - base_memory if device.type == "cuda" else None
    # The dense baseline on batches of N frames of the same clips (its cost does not
    # depend on the content), after the pool's memory was measured.
    batch = torch.cat([pool_clips[i % len(pool_clips)][0] for i in range(count)]).half()
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        if device.type == "cuda":
            dense = GraphReplay(dense, batch)
        for _ in range(args.frames):
            synchronize(device)
            began = time.perf_counter()
            dense(batch)
            synchronize(device)
            dense_ms.append((time.perf_counter() - began) * 1000)
    steady = step_ms[len(step_ms) // 4:]  # past the first (dense, capture) frames
    steady_dense = dense_ms[len(dense_ms) // 4:]
    p95 = sorted(steady)[int(0.95 * (len(steady) - 1))]
    return {
        "streams": count, "steps": len(step_ms), "joins": joins,
        "step_ms_median": statistics.median(steady), "latency_ms_p95": p95,
        "stream_fps": 1000 * count / statistics.median(steady),
        "dense_fp16_ms_median": statistics.median(steady_dense),
        "dense_fp16_stream_fps": 1000 * count / statistics.median(steady_dense),
        "state_mib_per_stream": model.state_bytes() / count / 2**20,
        "peak_mib_per_stream": None if peak is None else peak / count / 2**20,
        "backend": model.active_backend,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_streams: no CUDA device here; run it on the GPU machine (or --device cpu "
              "for a smoke run)", file=sys.stderr)
        return 1
    rows = [run(args, count, device) for count in args.streams]
    header = (f"{'streams':>7} {'step ms':>8} {'p95 ms':>7} {'stream fps':>10} "
              f"{'dense fp16 ms':>13} {'dense fps':>9} {'state MiB/str':>13} {'peak MiB/str':>12}")
    print(f"{args.arch} at {args.size[0]}x{args.size[1]}, {args.dtype}, threshold "
          f"{args.threshold}, backend {rows[0]['backend']}{', CUDA graph' if args.cuda_graph else ''}, "
          f"streams live {args.lifetime} frames")
    print(header)
    for r in rows:
        peak = "-" if r["peak_mib_per_stream"] is None else f"{r['peak_mib_per_stream']:.1f}"
        print(f"{r['streams']:>7} {r['step_ms_median']:>8.2f} {r['latency_ms_p95']:>7.2f} "
              f"{r['stream_fps']:>10.1f} {r['dense_fp16_ms_median']:>13.2f} "
              f"{r['dense_fp16_stream_fps']:>9.1f} {r['state_mib_per_stream']:>13.1f} {peak:>12}")
    args.json.write_text(json.dumps({"settings": {k: (str(v) if isinstance(v, Path) else v)
                                                  for k, v in vars(args).items()},
                                     "results": rows}, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
