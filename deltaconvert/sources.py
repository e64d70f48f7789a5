"""Video sources: what ``deltaconvert run`` and :func:`deltaconvert.stream` read.

A *source spec* is a video file, a directory (its video files, sorted by name), a glob
(``'clips/*.mp4'``), a stream URL (``rtsp://``, ``rtmp://``, ``http(s)://``) or a webcam
index (``0`` → ``/dev/video0`` through V4L2 on Linux, AVFoundation device 0 on macOS).
PyAV (FFmpeg) opens all of them. Each resolved source is one stream.

:class:`FrameReader` decodes one source in a background thread with FFmpeg's threaded
decoding (``thread_type = "AUTO"``) into a bounded queue (constant memory), keeping
frames ``start, start + stride, …`` before ``end``; a consumer of several sources polls
each reader without waiting (:meth:`FrameReader.poll`) and sleeps on one shared event
that every reader sets when it queues something. Frames stay RGB ``uint8`` until
:class:`Preprocess` moves them to the device and normalises them there:
``x = (resize_or_letterbox(rgb / 255) − mean) / std``.
"""
from __future__ import annotations

import functools
import glob
import queue
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import VideoError
from .video import IMAGENET_MEAN, IMAGENET_STD

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts",
                  ".flv", ".wmv", ".gif")
URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
LETTERBOX_GREY = 114 / 255  # the padding colour YOLO-style tools use


@dataclass(frozen=True)
class Source:
    """One stream: ``name`` (unique among a run's sources; used for output files),
    ``url`` and the FFmpeg ``format`` to open it with (None: guess)."""

    name: str
    url: str
    format: str | None = None


def _webcam(index: int) -> Source:
    if sys.platform == "darwin":
        return Source(f"webcam{index}", str(index), "avfoundation")
    return Source(f"webcam{index}", f"/dev/video{index}", "v4l2")


def expand_sources(specs: Sequence[str]) -> list[Source]:
    """Resolve source specs (see the module docstring) into streams, in order.

    Raises VideoError naming a spec that matches nothing.
    """
    found: list[tuple[str, str | None, str]] = []  # (url, format, stem)
    for spec in specs:
        spec = str(spec)
        if spec.isdigit():
            cam = _webcam(int(spec))
            found.append((cam.url, cam.format, cam.name))
        elif spec.lower().startswith(URL_SCHEMES):
            stem = spec.split("://", 1)[1].split("?", 1)[0].strip("/").replace("/", "_")
            found.append((spec, None, stem or "stream"))
        elif Path(spec).is_dir():
            files = sorted(p for p in Path(spec).iterdir()
                           if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not files:
                raise VideoError(f"directory {spec} holds no video file "
                                 f"(looked for {', '.join(VIDEO_SUFFIXES)})")
            found.extend((str(p), None, p.stem) for p in files)
        elif glob.has_magic(spec):
            files = sorted(p for p in glob.glob(spec, recursive=True) if Path(p).is_file())
            if not files:
                raise VideoError(f"glob {spec!r} matches no file")
            found.extend((p, None, Path(p).stem) for p in files)
        elif Path(spec).is_file():
            found.append((spec, None, Path(spec).stem))
        else:
            raise VideoError(f"video file not found: {spec} (a source is a file, directory, "
                             f"glob, rtsp:// or http:// URL, or a webcam index such as 0)")
    names: dict[str, int] = {}
    sources = []
    for url, fmt, stem in found:
        names[stem] = names.get(stem, 0) + 1
        name = stem if names[stem] == 1 else f"{stem}_{names[stem]}"
        sources.append(Source(name, url, fmt))
    return sources


def _open(source: Source):
    import av
    try:
        container = av.open(source.url, format=source.format, timeout=10.0)
    except (av.error.FFmpegError, OSError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise VideoError(f"cannot decode video file {source.url}: {reason}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{source.url} has no video stream")
    return container


def check_source(source: Source) -> None:
    """Open ``source`` and decode its first two frames (or its only one): raises
    VideoError now, before a run starts, if it cannot be decoded. (Two, because FFmpeg
    reads one frame out of some non-video files before it fails.)"""
    import itertools

    import av
    container = _open(source)
    try:
        if not list(itertools.islice(container.decode(video=0), 2)):
            raise StopIteration
    except (av.error.FFmpegError, StopIteration) as error:
        reason = getattr(error, "strerror", None) or str(error) or "no frame could be read"
        raise VideoError(f"cannot decode video file {source.url}: {reason}") from None
    finally:
        container.close()


def frame_rate(container: Any) -> Fraction | None:
    """The frame rate of an open PyAV container's first video stream (its average rate,
    else FFmpeg's guess), None when the source states none (some webcams and streams)."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate
    return Fraction(rate) if rate else None


class FrameReader:
    """Decodes ``source`` in a background thread; iterate it (or :meth:`poll` it) for
    ``(index, rgb)`` pairs, ``rgb`` an ``(H, W, 3)`` uint8 array and ``index`` the
    frame's number in the source.

    Keeps frames ``start, start + stride, …`` below ``end`` (None: to the end). At most
    ``buffer`` decoded frames wait in memory. ``fps`` is the rate of the kept frames (the
    source's :func:`frame_rate` divided by ``stride``; None when the source states none).
    ``wake``, when given, is set every time the thread queues a frame, an error or the
    end. Decoding errors surface, as VideoError, from the iteration or :meth:`poll`;
    :meth:`close` stops the thread (also on ``with`` exit).
    """

    _DONE = object()

    def __init__(self, source: Source, stride: int = 1, start: int = 0, end: int | None = None,
                 buffer: int = 4, wake: threading.Event | None = None) -> None:
        if stride < 1 or start < 0 or (end is not None and end <= start):
            raise ValueError(f"need stride ≥ 1, start ≥ 0 and end > start; got stride={stride}, "
                             f"start={start}, end={end}")
        self.source = source
        self._container = _open(source)  # fails here, in the caller, for a bad source
        rate = frame_rate(self._container)
        self.fps: Fraction | None = rate / stride if rate else None
        self.ended = False
        self._keep = (stride, start, end)
        self._queue: queue.Queue = queue.Queue(maxsize=buffer)
        self._wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, name=f"decode-{source.name}",
                                        daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            if self._wake is not None:
                self._wake.set()
            return True
        return False

    def _decode(self) -> None:
        import av
        stride, start, end = self._keep
        container = self._container
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if end is not None and index >= end:
                    break
                if index >= start and (index - start) % stride == 0:
                    if not self._put((index, frame.to_ndarray(format="rgb24"))):
                        return
        except av.error.FFmpegError as error:
            reason = getattr(error, "strerror", None) or str(error)
            self._put(VideoError(f"cannot decode video file {self.source.url}: {reason}"))
        except BaseException as error:  # surfaced to the consumer, never swallowed
            self._put(error)
        finally:
            container.close()
            self._put(self._DONE)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        while not self.ended and (item := self._take(self._queue.get())) is not None:
            yield item

    def poll(self) -> tuple[int, np.ndarray] | None:
        """The next kept frame if one is decoded, else None at once (also after the end,
        when ``ended`` is True); raises the source's decoding error."""
        if self.ended:
            return None
        try:
            item = self._queue.get_nowait()
        except queue.Empty:
            return None
        return self._take(item)

    def _take(self, item: Any) -> tuple[int, np.ndarray] | None:
        """A queued item as a frame; None for the end marker; an error is raised. Both
        end the reader (``ended``)."""
        if item is self._DONE:
            self.ended = True
            return None
        if isinstance(item, BaseException):
            self.ended = True
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass(frozen=True)
class Preprocess:
    """RGB uint8 frames → normalised model inputs, on the device.

    ``size = (H, W)`` resizes (bilinear, antialiased); with ``letterbox`` the image is
    scaled to fit inside ``size`` keeping its aspect ratio and padded with grey
    (114/255). No size keeps the source resolution.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: tuple[int, int] | None = None
    letterbox: bool = False

    def __post_init__(self) -> None:
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values each (std > 0), got mean={self.mean}, "
                             f"std={self.std}")
        if self.letterbox and self.size is None:
            raise ValueError("letterbox needs a size (--resize HxW)")

    @classmethod
    def for_model(cls, model: Any, **overrides: Any) -> "Preprocess":
        """The model's own preprocessing (``model.conversion["data_config"]``, recorded
        from timm's ``resolve_data_config`` at conversion), else ImageNet statistics at
        the source resolution; ``overrides`` that are not None win."""
        config = dict(getattr(model, "conversion", {}).get("data_config") or {})
        values: dict[str, Any] = {}
        if "mean" in config:
            values["mean"] = tuple(config["mean"])
        if "std" in config:
            values["std"] = tuple(config["std"])
        if "input_size" in config:
            values["size"] = tuple(config["input_size"][-2:])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __call__(self, rgb: np.ndarray | torch.Tensor, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(H, W, 3)`` uint8 → ``(1, 3, h, w)`` ``dtype`` on ``device`` (the uint8
        image is what crosses to the device)."""
        image = torch.as_tensor(rgb).to(device, non_blocking=True)
        x = image.permute(2, 0, 1).unsqueeze(0).float().div_(255)
        if self.size is not None:
            x = self._letterbox(x) if self.letterbox else _resize(x, self.size)
        mean, std = _channels(tuple(self.mean), device), _channels(tuple(self.std), device)
        return ((x - mean) / std).to(dtype)

    def _letterbox(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.size
        scale = min(height / x.shape[-2], width / x.shape[-1])
        inner = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
        x = _resize(x, inner)
        top, left = (height - inner[0]) // 2, (width - inner[1]) // 2
        return F.pad(x, (left, width - inner[1] - left, top, height - inner[0] - top),
                     value=LETTERBOX_GREY)


@functools.lru_cache(maxsize=16)
def _channels(values: tuple[float, float, float], device: torch.device) -> torch.Tensor:
    """Per-channel constants as a ``(1, 3, 1, 1)`` tensor on ``device``, made once (not
    copied to the device every frame); callers never modify it."""
    return torch.tensor(values, device=device).view(1, 3, 1, 1)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(size) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False,
                         antialias=True).clamp_(0, 1)


def timm_data_config(model: Any) -> dict | None:
    """timm's ``resolve_data_config`` for a timm model (mean, std, input size …), as
    plain data; None for other models or without timm."""
    if not hasattr(model, "pretrained_cfg"):
        return None
    try:
        from timm.data import resolve_data_config
    except ImportError:
        return None
    config = resolve_data_config({}, model=model)
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in config.items()}
