"""Front-ends: models from other libraries made traceable before conversion.

:func:`prepare_source` looks at where the model's class comes from (its module name;
nothing is imported to find out) and hands library models to their front-end:

* ``ultralytics`` (YOLO ``DetectionModel``/``SegmentationModel``/``PoseModel``/…, or
  the ``YOLO`` wrapper): :mod:`deltaconvert.frontends.ultralytics`.

Every other model passes through unchanged. A front-end returns a :class:`Source`: the
module to trace (a private copy; the caller's model is never modified), the module
classes to keep as single ops, and the heads — leaf ops that run dense by design and
are reported apart from dense islands.
"""
from __future__ import annotations

from torch import nn

from .source import Source


def library_of(model: nn.Module) -> str:
    """The top-level package that defines ``type(model)`` (``"ultralytics"``, …)."""
    return type(model).__module__.partition(".")[0]


def prepare_source(model: nn.Module) -> Source:
    """The traceable form of ``model`` (see the module docstring)."""
    if library_of(model) == "ultralytics":
        from . import ultralytics as front
        return front.prepare(model)
    return Source(model)
