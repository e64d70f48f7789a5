"""The ultralytics front-end: YOLO detection, segmentation and pose models.

An ultralytics model is a list of layers run by ``BaseModel._predict_once``: layer ``i``
reads the outputs of the layers in ``layer.f`` and the last layer is the head
(``Detect``, ``Segment``, ``Pose``, ``OBB``, …). torch.fx cannot trace that method
(``forward(x, *args, **kwargs)``, dict inputs, profiling branches), nor ``C2f.forward``
(``list(t.chunk(2, 1))``), nor the head (anchors rebuilt when the input shape changes).

:func:`prepare` builds :class:`YoloBody`, the same layer loop with the wiring of a
private copy of the model fixed at build time; ``C2f``-style blocks run their
``forward_split`` (ultralytics' own export path: ``split`` instead of ``chunk``, the
same values). The backbone and the neck become the delta model; the head is kept as one
op that runs dense on the densified feature maps, with its box/mask/keypoint decoding
unchanged, so the converted model returns exactly what the original returns in eval
mode.

ultralytics is imported only here, and only for a model whose class comes from it.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, TraceFailure
from .source import Source


class YoloBody(nn.Module):
    """``_predict_once`` of an ultralytics model without profiling or embeddings:
    ``x = layer(inputs named by layer.f)``, outputs kept for the layers in ``save``."""

    def __init__(self, layers: nn.Sequential, save: list[int]) -> None:
        super().__init__()
        self.model = layers
        self.save = sorted(save)

    def forward(self, x: torch.Tensor):
        outputs: list = []
        for layer in self.model:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [
                    x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs.append(x if layer.i in self.save else None)
        return x


def _task_model(model: nn.Module) -> nn.Module:
    """The ``nn.Module`` holding the layers: the model itself, or the one inside a
    ``YOLO`` wrapper."""
    from ultralytics.engine.model import Model
    inner = model.model if isinstance(model, Model) else model
    if not isinstance(getattr(inner, "model", None), nn.Sequential):
        raise TraceFailure(
            f"{type(model).__name__} is an ultralytics object without a layer list "
            "(.model); pass a YOLO model or its DetectionModel/SegmentationModel/PoseModel "
            "(e.g. YOLO('yolov8n.pt').model)")
    return inner


def prepare(model: nn.Module) -> Source:
    """The traceable :class:`YoloBody` of a private copy of ``model`` in eval mode, its
    head as a leaf (see the module docstring)."""
    from ultralytics.nn.modules.head import Detect
    private = copy.deepcopy(_task_model(model)).eval()
    for module in private.modules():
        if hasattr(module, "forward_split"):
            module.forward = module.forward_split
    head = private.model[-1]
    if isinstance(head, Detect):
        # The head caches its anchors as plain tensors (not buffers) on the device of the
        # last input it saw, and ultralytics moves them in its own model's _apply, which
        # the converted model does not have: rebuilt every frame from the feature maps,
        # they are always on the frame's device (same values; a few small kernels).
        head.dynamic = True
    body = YoloBody(private.model, list(getattr(private, "save", [])))
    heads = {}
    if isinstance(head, Detect):
        heads[f"model.{len(private.model) - 1}"] = (
            f"the {type(head).__name__} head runs dense on the densified feature maps "
            "(its decoding unchanged)")
    return Source(body, (Detect,), heads, "ultralytics")


def load_checkpoint(path: str | Path) -> nn.Module:
    """The model of an ultralytics checkpoint file (``best.pt``, ``yolov8n.pt``), in
    float32 and eval mode (ultralytics stores the EMA weights in float16). Never
    downloads: the file must exist."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--checkpoint {path}: no such file")
    try:
        from ultralytics.nn.tasks import load_checkpoint as ultralytics_load
    except ImportError:
        raise CheckpointError("reading a YOLO checkpoint needs ultralytics: pip install "
                              "'deltaconvert[ultralytics]'") from None
    try:
        model, _ = ultralytics_load(str(path), device="cpu")
    except Exception as error:  # noqa: BLE001 - ultralytics raises many kinds
        raise CheckpointError(f"{path}: not an ultralytics checkpoint ({type(error).__name__}: "
                              f"{error})") from error
    return model.float().eval()
