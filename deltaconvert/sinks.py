"""Where ``deltaconvert run`` writes, with memory that does not grow with the run.

* :func:`new_run_folder`: ``-o runs/predict`` is used as given when it does not exist
  or is empty; otherwise the first free ``runs/predict2``, ``runs/predict3``, … (as
  ultralytics numbers its run folders), so a run never mixes its files with an earlier
  run's.
* :class:`FrameRows`: one JSON line per frame (``frames.jsonl``, flushed line by line)
  and, per frame, the output as a ``.pt`` file written atomically
  (``outputs/<stream>/<frame>.pt``).
* :class:`HeatmapVideo`: per stream, an H.264 video (PyAV) of the frame in grey with the
  share of the dense work done at each pixel overlaid, a colour legend and the frame's
  work fraction, at the stream's frame rate (:data:`DEFAULT_FPS` when it has none);
  written as ``<name>.partial`` and renamed when closed, also when the run is
  interrupted (then it holds the frames done so far).
"""
from __future__ import annotations

import io
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .delta import map_tensor_leaves
from .errors import InvalidArgument
from .files import write_bytes_atomic
from .heatmap import render_heatmap
from .validation import check_output_directory

LEGEND_HEIGHT = 24
DEFAULT_FPS = 25  # heatmap videos of sources that state no frame rate


def new_run_folder(path: str | os.PathLike) -> Path:
    """``path`` if it is free (missing or an empty directory), else the first free
    ``path2``, ``path3``, …; created before it is returned. A path that cannot become a
    writable directory is refused before anything is created."""
    base = check_output_directory(path, "-o")
    candidate, number = base, 1
    while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
        number += 1
        candidate = base.with_name(f"{base.name}{number}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def storable(output: Any) -> Any:
    """A model output for a ``.pt`` file: on the CPU; ``(N, C, H, W)`` maps as their
    per-pixel argmax (uint8 up to 256 classes)."""
    def store(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu()
        if tensor.dim() == 4:
            return tensor.argmax(dim=1).to(torch.uint8 if tensor.shape[1] <= 256 else torch.int32)
        return tensor
    return map_tensor_leaves(output, store)


class FrameRows:
    """``frames.jsonl`` (one row per frame) and the per-frame output files in ``folder``."""

    def __init__(self, folder: Path, save_outputs: bool = True) -> None:
        self.folder = folder
        self.save_outputs = save_outputs
        self._rows = open(folder / "frames.jsonl", "a", encoding="utf-8")

    def write(self, row: dict[str, Any], output: Any = None) -> None:
        """Append ``row``; with ``save_outputs``, also write ``output`` to
        ``outputs/<stream>/<frame>.pt`` and name it in the row."""
        if self.save_outputs and output is not None:
            directory = self.folder / "outputs" / row["stream"]
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / f"{row['frame']:06d}.pt"
            buffer = io.BytesIO()
            torch.save(storable(output), buffer)
            write_bytes_atomic(path, buffer.getvalue())
            row = {**row, "output": str(path.relative_to(self.folder))}
        self._rows.write(json.dumps(row) + "\n")
        self._rows.flush()

    def close(self) -> None:
        self._rows.close()


def _codec() -> str:
    import av
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # FFmpeg builds without x264 still have MPEG-4 part 2
        return "mpeg4"


def legend(width: int, text: str) -> np.ndarray:
    """A ``(LEGEND_HEIGHT, width, 3)`` strip: the colour scale from 0 (no work) to 1
    (all the dense work) and ``text``."""
    from PIL import Image, ImageDraw
    ramp = torch.linspace(0, 1, max(width // 3, 2)).view(1, -1).expand(LEGEND_HEIGHT - 8, -1)
    grey = torch.full((3, *ramp.shape), 255, dtype=torch.uint8)
    bar = render_heatmap(grey, ramp).permute(1, 2, 0).numpy()
    strip = Image.new("RGB", (width, LEGEND_HEIGHT), (0, 0, 0))
    strip.paste(Image.fromarray(np.ascontiguousarray(bar)), (4, 4))
    draw = ImageDraw.Draw(strip)
    draw.text((8 + bar.shape[1], 5), f"0→1 of dense work  {text}", fill=(255, 255, 255))
    return np.asarray(strip)


class HeatmapVideo:
    """One stream's annotated work-map video (see the module docstring), played at
    ``fps`` frames per second (a number or a ``Fraction`` such as 30000/1001; None:
    :data:`DEFAULT_FPS`)."""

    def __init__(self, path: Path, fps: float | Fraction | None = None) -> None:
        if fps is not None and not 0 < fps < float("inf"):
            raise InvalidArgument(f"fps of {path.name} must be a finite number > 0, got {fps!r}")
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        # An exact rational rate (29.97 → 2997/100) that the container's time base can hold.
        self._fps = Fraction(DEFAULT_FPS if fps is None else fps).limit_denominator(65535)
        self._container = None
        self._stream = None
        self.frames = 0

    def write(self, rgb: np.ndarray, heat: torch.Tensor, text: str) -> None:
        """Add a frame: ``rgb`` (H, W, 3) uint8, ``heat`` (h, w) in [0, 1] (resized to
        the frame), ``text`` written on the legend."""
        import av
        import torch.nn.functional as F
        image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
        heat = F.interpolate(heat[None, None].float(), size=image.shape[-2:], mode="nearest")[0, 0]
        picture = render_heatmap(image, heat).permute(1, 2, 0).numpy()
        picture = np.concatenate([picture, legend(picture.shape[1], text)], axis=0)
        height, width = picture.shape[0] + picture.shape[0] % 2, picture.shape[1] + picture.shape[1] % 2
        picture = np.pad(picture, ((0, height - picture.shape[0]), (0, width - picture.shape[1]), (0, 0)))
        if self._container is None:
            self._container = av.open(str(self._partial), "w", format="mp4")
            self._stream = self._container.add_stream(_codec(), rate=self._fps)
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder and move the finished video into place."""
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None
        os.replace(self._partial, self.path)
