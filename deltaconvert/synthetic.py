"""Deterministic synthetic static-camera video for tests and tuning.

A textured static background (sums of random sinusoids), objects that move across it,
an object that appears mid-clip, and mild per-frame sensor noise. Frames are float
tensors ``(N, 3, H, W)`` roughly normalised like ImageNet inputs; each of the ``N``
streams is an independent clip.
"""
from __future__ import annotations

import math

import torch


def _texture(generator: torch.Generator, height: int, width: int, waves: int = 12) -> torch.Tensor:
    ys = torch.linspace(0, 1, height).view(height, 1)
    xs = torch.linspace(0, 1, width).view(1, width)
    image = torch.zeros(3, height, width)
    for _ in range(waves):
        fy, fx = (torch.rand(2, generator=generator) * 24).tolist()
        phase = float(torch.rand(1, generator=generator)) * 2 * math.pi
        amp = torch.randn(3, 1, 1, generator=generator) * 0.4
        image += amp * torch.sin(2 * math.pi * (fy * ys + fx * xs) + phase)
    return image


def synthetic_video(frames: int, height: int, width: int, batch: int = 1, seed: int = 0,
                    noise: float = 0.01) -> list[torch.Tensor]:
    """``frames`` tensors of shape ``(batch, 3, height, width)``."""
    generator = torch.Generator().manual_seed(seed)
    clips = []
    for _ in range(batch):
        background = _texture(generator, height, width)
        size = max(2, min(height, width) // 4)
        sprites = [_texture(generator, size, size, waves=4) + torch.randn(3, 1, 1, generator=generator)
                   for _ in range(3)]
        starts = torch.rand(3, 2, generator=generator)
        speeds = (torch.rand(3, 2, generator=generator) - 0.5) * 4
        appear_at = frames // 2
        clip = []
        for t in range(frames):
            image = background.clone()
            for i, sprite in enumerate(sprites):
                if i == 2 and t < appear_at:
                    continue
                y = int((starts[i, 0] * (height - size) + speeds[i, 0] * t) % max(1, height - size))
                x = int((starts[i, 1] * (width - size) + speeds[i, 1] * t) % max(1, width - size))
                image[:, y:y + size, x:x + size] = sprite
            image += noise * torch.randn(image.shape, generator=generator)
            clip.append(image)
        clips.append(torch.stack(clip))
    video = torch.stack(clips, dim=1)  # (frames, batch, 3, H, W)
    return [video[t].contiguous() for t in range(frames)]
