"""``deltaconvert.stream(model, source)``: per-frame results of a converted model on one
or several video sources, as a generator (like ultralytics' ``stream=True``).

Each source is a stream in its own slot of a :class:`~deltaconvert.streams.StreamPool`.
The streams advance independently: every model call takes the next frame of each stream
whose decoder has one ready (one batched call; when none has, the loop sleeps until one
has). A stream without a new frame is idle in that call: it costs no work and keeps its
state (the READY gate of :meth:`~deltaconvert.model.DeltaGraphModule.run_slots`), so a
slow source (a 5 fps camera beside a 30 fps one, a stalled network stream) never holds
back the others, and a source that ends releases its slot while the others go on (so
does a source that fails, when the caller passes ``on_error``: a camera that drops out
need not stop the other cameras). A
stream's first frame is dense; later frames are delta frames. A stream's outputs depend
only on its own frames, not on which streams share a call. Memory does not grow with the
number of frames: a result holds one frame, and the decoders' queues are bounded.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .heatmap import UpdateRecorder
from .model import DeltaGraphModule
from .sources import FrameReader, Preprocess, Source, expand_sources
from .streams import StreamPool


@dataclass
class Result:
    """One frame of one stream.

    ``output``: the model's output for the frame (one sample, on the model's device).
    ``dense``: the stream's dense (first) frame. ``work_fraction``: the share of the dense
    multiply-adds done for this frame and stream (1.0 on a dense frame). ``heat``: the
    ``(h, w)`` CPU map of that share per pixel when asked for, else None. ``ms``: the wall
    time of the model call that computed the frame, shared by the streams batched in it.
    ``input``: the model input (one sample, on the device); ``rgb``: the decoded frame,
    ``(H, W, 3)`` uint8. ``fps``: the stream's rate of kept frames (the source's frame
    rate divided by ``stride``), None when the source states no rate.
    """

    stream: str
    frame: int
    output: Any
    dense: bool
    work_fraction: float | None
    ms: float
    input: torch.Tensor
    rgb: np.ndarray
    heat: torch.Tensor | None = None
    fps: Fraction | None = None


def _model_placement(model: DeltaGraphModule) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


SourceErrorHandler = Callable[[str, Exception], None]


def stream(model: DeltaGraphModule, source: str | Sequence[str], *,
           preprocess: Preprocess | None = None, stride: int = 1, start: int = 0,
           end: int | None = None, heatmap: bool = False,
           on_error: SourceErrorHandler | None = None) -> Iterator[Result]:
    """Results of ``model`` on every kept frame of ``source`` (one spec or several, see
    :func:`~deltaconvert.sources.expand_sources`), frame by frame.

    ``preprocess`` defaults to the model's own (:meth:`Preprocess.for_model`);
    ``stride``/``start``/``end`` pick frames of each source; ``heatmap`` adds each
    frame's work map. The model's sequence is reset and ``model.slots`` set to the
    number of streams. A source that fails while decoding raises its error here, unless
    ``on_error`` is given: then ``on_error(stream_name, error)`` is called, that stream
    ends (its slot is released) and the others go on.
    """
    sources = expand_sources([source] if isinstance(source, (str, bytes)) or not
                             isinstance(source, Sequence) else list(source))
    yield from stream_sources(model, sources, preprocess=preprocess, stride=stride,
                              start=start, end=end, heatmap=heatmap, on_error=on_error)


def stream_sources(model: DeltaGraphModule, sources: Sequence[Source], *,
                   preprocess: Preprocess | None = None, stride: int = 1, start: int = 0,
                   end: int | None = None, heatmap: bool = False,
                   on_error: SourceErrorHandler | None = None) -> Iterator[Result]:
    """:func:`stream` on already resolved sources."""
    device, dtype = _model_placement(model)
    preprocess = preprocess or Preprocess.for_model(model)
    pool = StreamPool(model, slots=len(sources))
    wake = threading.Event()  # set by a decoder whenever it queues a frame or its end
    with contextlib.ExitStack() as stack:
        readers = {s.name: stack.enter_context(FrameReader(s, stride, start, end, wake=wake))
                   for s in sources}
        recorder = stack.enter_context(UpdateRecorder(model))
        running = dict(readers)
        while running:
            wake.clear()  # before polling: a frame queued after a poll sets it again
            frames, rgbs = {}, {}
            for name, reader in list(running.items()):
                try:
                    item = reader.poll()
                except Exception as error:  # the source's decoding error; the reader has ended
                    if on_error is None:
                        raise
                    on_error(name, error)
                    item = None
                if item is not None:
                    index, rgbs[name] = item
                    frames[name] = (index, preprocess(rgbs[name], device, dtype))
                elif reader.ended:
                    del running[name]
                    if name in pool:
                        pool.release(name)
            if not frames:
                if running:
                    wake.wait()
                continue
            dense = {name for name in frames if name not in pool}
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            outputs = pool.step({name: x for name, (_, x) in frames.items()})
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            ms = (time.perf_counter() - began) * 1000
            size = next(iter(frames.values()))[1].shape[-2:]
            work = recorder.work_map(tuple(size)) if len(dense) < len(frames) else None
            for name, (index, x) in frames.items():
                if name in dense:
                    heat = torch.ones(tuple(size)) if heatmap else None
                    fraction = 1.0
                else:
                    row = work[pool.streams[name]] if work is not None else None
                    fraction = float(row.mean()) if row is not None else None
                    heat = row if heatmap else None
                yield Result(name, index, outputs[name], name in dense, fraction, ms, x,
                             rgbs[name], heat, readers[name].fps)
