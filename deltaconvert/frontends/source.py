"""What a front-end hands to the converter."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass
class Source:
    """``module``: what to trace (a private copy); ``leaves``: module classes traced as
    single ops; ``heads``: stable name → why that leaf runs dense by design;
    ``library``: where the model came from."""

    module: nn.Module
    leaves: tuple[type, ...] = ()
    heads: dict[str, str] = field(default_factory=dict)
    library: str = "torch"
