"""The static-camera benchmark clip, generated deterministically (needs scikit-image,
the ``bench`` extra, and PyAV).

What it contains, frame by frame (RGB, ``height × width``):

* background: the real photograph ``skimage.data.rocket()`` (a launch pad), cropped to
  the clip's aspect ratio and resized; it never moves (a camera on a tripod);
* a real image cutout, the cat's face of ``skimage.data.chelsea()`` under a soft
  elliptical alpha mask, moving left to right across the frame on a gentle wave;
* a second cutout, the cup of ``skimage.data.coffee()``, that appears half-way through
  the clip and drifts slowly;
* mild sensor noise: independent Gaussian noise of ``--noise`` grey levels per pixel,
  channel and frame;

encoded with H.264 (libx264, yuv420p, constant quality ``--crf``) through PyAV, so the
frames the benchmark decodes carry real compression artefacts. The clip is decoded back
once to check its frame count and size before it replaces the destination (atomically,
through :func:`deltaconvert.files.atomic_writer`).

Fixed seeds and bit-exact muxing make the file reproducible byte for byte given the same
versions of numpy, scikit-image, PyAV and its FFmpeg/x264.

:func:`deltaconvert.bench.data.static_clip` calls :func:`write_clip` with the defaults
on first use; ``scripts/make_static_clip.py`` is its command line.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ..files import atomic_writer

HEIGHT, WIDTH, FRAMES = 720, 1280, 120  # the benchmark's clip


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``image`` (H, W, C) resized to (height, width), float64 in the input's range."""
    from skimage.transform import resize
    return resize(image.astype(np.float64), (height, width), order=3, mode="edge",
                  anti_aliasing=True, preserve_range=True)


def _crop_to_aspect(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred crop of ``image`` with the aspect ratio ``width / height``."""
    rows, cols = image.shape[:2]
    if cols * height > rows * width:  # too wide
        keep = rows * width // height
        start = (cols - keep) // 2
        return image[:, start:start + keep]
    keep = cols * height // width
    start = (rows - keep) // 2
    return image[start:start + keep]


def _soft_ellipse(height: int, width: int, edge: float = 0.15) -> np.ndarray:
    """Alpha mask (height, width, 1): 1 inside an inscribed ellipse, fading to 0 over
    the outer ``edge`` of its radius."""
    ys = (np.arange(height) + 0.5) / height * 2 - 1
    xs = (np.arange(width) + 0.5) / width * 2 - 1
    radius = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2)
    return np.clip((1 - radius) / edge, 0, 1)[..., None]


def _cutout(image: np.ndarray, box: tuple[int, int, int, int], height: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``box`` (top, left, bottom, right) of ``image`` scaled to ``height`` rows,
    with its soft elliptical alpha mask."""
    top, left, bottom, right = box
    width = round(height * (right - left) / (bottom - top))
    patch = _resize(image[top:bottom, left:right], height, width)
    return patch, _soft_ellipse(height, width)


def _paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, top: int, left: int) -> None:
    """Alpha-blend ``patch`` onto ``canvas`` (in place) at (top, left), clipped to it."""
    rows, cols = canvas.shape[:2]
    ph, pw = patch.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + ph, rows), min(left + pw, cols)
    if y0 >= y1 or x0 >= x1:
        return
    p = patch[y0 - top:y1 - top, x0 - left:x1 - left]
    a = alpha[y0 - top:y1 - top, x0 - left:x1 - left]
    canvas[y0:y1, x0:x1] = a * p + (1 - a) * canvas[y0:y1, x0:x1]


def render_frames(height: int, width: int, frames: int, seed: int = 0,
                  noise: float = 2.0) -> Iterator[np.ndarray]:
    """The clip's frames as uint8 RGB arrays (height, width, 3), before encoding."""
    from skimage import data

    rng = np.random.default_rng(seed)
    background = _resize(_crop_to_aspect(data.rocket(), height, width), height, width)
    cat, cat_alpha = _cutout(data.chelsea(), (10, 60, 290, 400), max(2, height * 3 // 8))
    cup, cup_alpha = _cutout(data.coffee(), (10, 70, 390, 490), max(2, height // 4))
    appear = frames // 2
    for t in range(frames):
        progress = t / max(frames - 1, 1)
        canvas = background.copy()
        cat_left = round(progress * width - cat.shape[1] / 2)
        cat_top = round(height * 0.45 + height * 0.08 * np.sin(2 * np.pi * progress * 1.5))
        _paste(canvas, cat, cat_alpha, cat_top, cat_left)
        if t >= appear:
            moved = t - appear
            _paste(canvas, cup, cup_alpha, round(height * 0.1 + moved * height / 600),
                   round(width * 0.65 - moved * width / 500))
        canvas += rng.normal(0.0, noise, canvas.shape)
        yield np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def encode_h264(frames: Iterator[np.ndarray], out: BinaryIO, height: int, width: int,
                fps: int = 30, crf: int = 20) -> None:
    """Encode RGB frames as an H.264 mp4 into the seekable binary file ``out``, with
    bit-exact muxing."""
    import av

    with av.open(out, "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.options = {"crf": str(crf), "preset": "medium"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def count_decoded(path: Path) -> tuple[int, int, int]:
    """(frames, height, width) of the clip at ``path``, decoding every frame."""
    import av

    with av.open(str(path)) as container:
        count, shape = 0, (0, 0)
        for frame in container.decode(video=0):
            count, shape = count + 1, (frame.height, frame.width)
    return count, shape[0], shape[1]


def write_clip(path: Path, height: int = HEIGHT, width: int = WIDTH, frames: int = FRAMES,
               seed: int = 0, noise: float = 2.0, crf: int = 20) -> Path:
    """Render and encode the clip, decode it back to check its frame count and size, and
    only then let it replace ``path`` (its folder is created if needed); returns ``path``."""
    if height % 2 or width % 2:
        raise ValueError(f"H.264 (yuv420p) needs an even size, got {height}×{width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as out:
        encode_h264(render_frames(height, width, frames, seed, noise), out, height, width, crf=crf)
        out.flush()
        decoded = count_decoded(Path(out.name))
        if decoded != (frames, height, width):
            raise RuntimeError(f"decoding the new clip gave (frames, H, W) = {decoded}, "
                               f"expected {(frames, height, width)}")
    return path
