"""Checks of user-supplied settings and names, shared by the model, the threshold files
and the architecture lookup, so that each kind of bad value gets one wording.

Every check returns the normalised value or raises :class:`~deltaconvert.errors.ConfigError`
naming the setting, the value given and what is allowed.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

from .errors import ConfigError

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
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=SUGGESTION_CUTOFF)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_layer_message(name: str, known: list[str]) -> str:
    """The message for a layer name that is not one of ``known`` (a model's thresholds)."""
    return (f"unknown layer {name!r}.{closest_names(name, known)} "
            f"(model.thresholds lists the {len(known)} valid names)")
