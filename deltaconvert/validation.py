"""Checks of user-supplied settings and names, shared by the model, the threshold files
and the architecture lookup, so that each kind of bad value gets one wording.

Every check returns the normalised value or raises :class:`~deltaconvert.errors.ConfigError`
naming the setting, the value given and what is allowed.
"""
from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import ConfigError, InvalidArgument

# How close a name must be (difflib's ratio) to be offered as "did you mean".
SUGGESTION_CUTOFF = 0.5


def validate_threshold(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"threshold for {name!r} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ConfigError(f"threshold for {name!r} must be finite and ≥ 0, got {value}")
    return value


def check_dilation(value: Any, name: str = "input.dilation") -> int:
    """``value`` if it is an integer ≥ 0 (a mask dilation in pixels)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be an integer ≥ 0, got {value!r}")
    return value


def closest_names(name: str, known: Iterable[str]) -> str:
    """``" Did you mean 'a', 'b'?"`` for up to three names in ``known`` closest to
    ``name``, or ``""`` when none is close."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=SUGGESTION_CUTOFF)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_layer_message(name: str, known: list[str]) -> str:
    """The message for a layer name that is not one of ``known`` (a model's thresholds)."""
    return (f"unknown layer {name!r}.{closest_names(name, known)} "
            f"(model.thresholds lists the {len(known)} valid names)")


def describe(value: Any) -> str:
    """A short description of a value for error messages: its type, and the value
    itself when it is short (``str 'resnet18'``, ``Tensor of shape (1, 3, 8, 8)``)."""
    if value is None:
        return "None"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    return f"{type(value).__name__} {text}" if len(text) <= 60 else type(value).__name__


def check_output_file(path: Any, what: str) -> Path:
    """``path`` as a Path if a file can be written there: not a directory, its folder
    exists and is writable, and an existing file there is writable. ``what`` names the
    argument in the message (``"-o"``, ``"save(path=...)"``)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(f"{what}: expected a file path (str or pathlib.Path), got "
                              f"{describe(path)}")
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise InvalidArgument(f"{what} {path}: is a directory; give a file name inside it, "
                              f"e.g. {path / 'model.delta.pt'}")
    if not folder.is_dir():
        raise InvalidArgument(f"{what} {path}: directory {folder} does not exist; create it "
                              f"first (mkdir -p {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidArgument(f"{what} {path}: the folder {folder} is not writable; choose "
                              "another folder or change its permissions")
    if path.exists() and not os.access(path, os.W_OK):
        raise InvalidArgument(f"{what} {path}: the file exists and is not writable")
    return path


def check_output_directory(path: Any, what: str) -> Path:
    """``path`` as a Path if it is, or can be created as, a writable directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(f"{what}: expected a directory path, got {describe(path)}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgument(f"{what} {path}: exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgument(f"{what} {path}: {existing} is not a writable directory; "
                              "choose another place")
    return path


def input_signature(example: tuple) -> list[dict[str, Any]]:
    """What :func:`check_frame_inputs` checks of each example input, as plain data (kept
    in a converted model's ``conversion["inputs"]`` and in saved files)."""
    return [{"rank": x.dim(), "channels": int(x.shape[1]) if x.dim() > 1 else None}
            for x in example]


def check_frame_inputs(signature: list[dict[str, Any]] | None, args: tuple) -> None:
    """Raise :class:`InvalidArgument` unless ``args`` (a frame given to a converted model)
    fit the inputs the model was converted with: as many tensors, floating-point, of
    the same rank (a batch of N streams first) and channel count."""
    if signature is None:  # a model saved before inputs were recorded
        return
    if len(args) != len(signature):
        raise InvalidArgument(f"the model takes {len(signature)} input(s) (as converted), got "
                              f"{len(args)}: call it as model(frame)")
    for index, (x, expected) in enumerate(zip(args, signature)):
        like = f"(N, {expected['channels']}, H, W)" if expected["rank"] == 4 else \
            f"of rank {expected['rank']}"
        where = f"input {index}" if len(signature) > 1 else "the frame"
        if not isinstance(x, torch.Tensor):
            raise InvalidArgument(f"{where}: expected a torch.Tensor {like}, got {describe(x)}; "
                                  "convert it with torch.as_tensor(...)")
        if not x.is_floating_point():
            raise InvalidArgument(f"{where}: expected a floating-point tensor, got dtype "
                                  f"{x.dtype}; use frame.float()")
        if x.dim() != expected["rank"]:
            hint = "; add the batch dim with frame.unsqueeze(0)" if x.dim() + 1 == expected["rank"] \
                else ""
            raise InvalidArgument(f"{where}: expected a tensor {like} (a batch of N streams "
                                  f"first), got shape {tuple(x.shape)}{hint}")
        if expected["channels"] is not None and x.shape[1] != expected["channels"]:
            raise InvalidArgument(f"{where}: expected {expected['channels']} channels {like}, "
                                  f"got shape {tuple(x.shape)}")
