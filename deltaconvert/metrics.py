"""How outputs are compared: one definition of the relative error, used by tests, the
tuner, the demo and the benchmark."""
from __future__ import annotations

from typing import Any

import torch

from .delta import tensor_leaves


def flat_output(output: Any) -> torch.Tensor:
    """Every tensor of a model output (tensor, tuple, list or dict), flattened and
    concatenated as float64."""
    return torch.cat([leaf.detach().reshape(-1).double() for leaf in tensor_leaves(output)])


def relative_error(output: Any, reference: Any) -> float:
    """``‖output − reference‖₂ / ‖reference‖₂`` over all output tensors, in float64."""
    out, ref = flat_output(output), flat_output(reference)
    return float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def main_output(output: Any) -> torch.Tensor:
    """The tensor a model is judged by: the output itself, ``output["out"]`` of a
    segmentation model, or the first element of a tuple."""
    if isinstance(output, dict):
        return output["out"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def pooled(output: torch.Tensor) -> torch.Tensor:
    """The output averaged over its spatial dims (the output itself if it has none)."""
    return output.mean(dim=tuple(range(2, output.dim()))) if output.dim() > 2 else output
