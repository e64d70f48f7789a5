#!/usr/bin/env python3
"""Generate the static-camera benchmark clip (see deltaconvert.bench.static_clip).

    python scripts/make_static_clip.py --out static_clip.mp4

The benchmark generates it on first use into its data folder; this writes one anywhere,
e.g. into a folder staged for a machine without scikit-image. Needs the bench extra
(pip install 'deltaconvert[bench]').
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deltaconvert.bench import static_clip
from deltaconvert.bench.data import STATIC_CLIP, default_data_dir


def main(argv: list[str] | None = None) -> int:
    default_out = default_data_dir() / STATIC_CLIP
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out,
                        help=f"file to write (default {default_out}, where the benchmark looks)")
    parser.add_argument("--height", type=int, default=static_clip.HEIGHT)
    parser.add_argument("--width", type=int, default=static_clip.WIDTH)
    parser.add_argument("--frames", type=int, default=static_clip.FRAMES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=2.0, help="sensor noise σ in grey levels")
    parser.add_argument("--crf", type=int, default=20, help="x264 constant quality")
    args = parser.parse_args(argv)
    path = static_clip.write_clip(args.out, args.height, args.width, args.frames, args.seed,
                                  args.noise, args.crf)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {args.frames} frames, "
          f"{args.height}x{args.width})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
