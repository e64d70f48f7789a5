"""Where a delta model did its work: per-frame update maps and their rendering.

An :class:`UpdateRecorder` watches the ops that carry weights (convolutions, linear
layers) of a converted model. After a delta frame, :meth:`UpdateRecorder.work_map`
returns, per input pixel, the share of the frame's dense multiply-adds still done there:
each op's update mask, resized (nearest) to the input resolution and weighted by the
op's dense multiply-adds. 1 means every layer recomputed that pixel's neighbourhood,
0 that nothing was recomputed. Its mean over the image is close to the model's
``stats()["work_fraction_last"]`` (equal when every op has the input's aspect ratio).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .delta import Delta
from .model import DeltaGraphModule


class UpdateRecorder:
    """Records the update masks of a model's weighted ops on every delta frame.

    Use as a context manager (hooks are removed on exit). Masks are copied on the
    model's device; nothing synchronises with the device until :meth:`work_map`.
    """

    def __init__(self, model: DeltaGraphModule) -> None:
        self._ops = {name: op for name, op in model.delta_ops().items() if op.macs_per_pixel > 0}
        self._masks: dict[str, torch.Tensor] = {}
        self._hooks: list[Any] = []

    def __enter__(self) -> "UpdateRecorder":
        for name, op in self._ops.items():
            self._hooks.append(op.register_forward_hook(
                lambda module, args, out, name=name: self._record(name, out)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()

    def _record(self, name: str, out: Any) -> None:
        if isinstance(out, Delta) and out.mask.dim() == 4:
            self._masks[name] = out.mask.clone()
        else:
            self._masks.pop(name, None)

    def work_map(self, size: tuple[int, int]) -> torch.Tensor | None:
        """``(N, H, W)`` float map in [0, 1] for the last frame (None after a dense
        frame, which does all the work everywhere)."""
        if not self._masks:
            return None
        total = None
        weight_sum = 0.0
        for name, mask in self._masks.items():
            weight = float(self._ops[name].macs_per_pixel * mask.shape[-2] * mask.shape[-1])
            resized = F.interpolate(mask.float(), size=size, mode="nearest")[:, 0].cpu() * weight
            total = resized if total is None else total + resized
            weight_sum += weight
        self._masks.clear()
        return total / max(weight_sum, 1e-30)


def render_heatmap(image: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """``image`` (3, H, W) uint8 in grey, overlaid with ``heat`` (H, W) in [0, 1] from
    transparent (0) through red to yellow (1); returns (3, H, W) uint8."""
    grey = image.float().mean(dim=0, keepdim=True).expand(3, -1, -1) * 0.6
    heat = heat.clamp(0, 1).unsqueeze(0)
    colour = torch.cat([torch.ones_like(heat), (2 * heat - 1).clamp(0, 1), torch.zeros_like(heat)]) * 255
    alpha = (heat * 1.5).clamp(0, 0.85)
    return (grey * (1 - alpha) + colour * alpha).round().to(torch.uint8)
