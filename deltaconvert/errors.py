"""Exceptions raised by deltaconvert. Every message names the layer or node involved
and the fix."""
from __future__ import annotations


class DeltaConvertError(Exception):
    """Base class of every error deltaconvert raises on purpose."""


class TraceFailure(DeltaConvertError):
    """The model could not be traced by torch.fx."""


class UnsupportedOp(DeltaConvertError):
    """A handler cannot express this node as a delta op; the node runs dense."""


class SequenceMismatch(DeltaConvertError):
    """A frame does not fit the sequence the model is in (shape, dtype or device)."""


class ConfigError(DeltaConvertError):
    """A threshold configuration (YAML or dict) is malformed or names unknown layers."""


class CheckpointError(DeltaConvertError):
    """A checkpoint does not fit the architecture it is loaded into."""


class BackendUnavailable(DeltaConvertError):
    """The requested backend cannot run here (no GPU, no PyCUDA, no nvcc …)."""


class ModelFileError(DeltaConvertError):
    """A saved delta-model file is missing, not a deltaconvert file, or of another version."""


class PoolFull(DeltaConvertError):
    """Every slot of a StreamPool holds a stream; a new stream cannot be admitted."""


class VideoError(DeltaConvertError):
    """A video file is missing or cannot be decoded."""


class UnknownArchitecture(DeltaConvertError):
    """No torchvision classification or segmentation builder has the given name."""


class InvalidArgument(DeltaConvertError, TypeError, ValueError):
    """An argument of a public function has the wrong type or value. The message says
    what was given, what was expected and the fix. (Also a TypeError/ValueError, so
    code catching those keeps working.)"""


class ConversionError(DeltaConvertError):
    """Conversion stopped inside deltaconvert: the message names the stage and the node or
    module, and the ways out (register the module as a leaf, or report the model)."""


class UnknownLayer(DeltaConvertError, KeyError):
    """A layer name that the model does not have (with the closest names). Also a
    KeyError, as ``model.thresholds`` is a mapping."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
