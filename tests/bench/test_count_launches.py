"""count_launches counts a steady state: it profiles only frames after the first
SETTLE_FRAMES (a delta model's dense, eager, settled-plan and capture frames), and answers None where
there is nothing to count (a CPU, or no frame after those)."""
from __future__ import annotations

import torch

from deltaconvert.bench.runners import SETTLE_FRAMES, count_launches


class Untouchable:
    """A runner that fails if count_launches runs it."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def reset(self) -> None:
        raise AssertionError("count_launches ran a runner it had nothing to count on")

    __call__ = track_stats = reset


def test_nothing_to_count_without_a_frame_after_the_settling_ones():
    frames = [torch.zeros(1)] * SETTLE_FRAMES
    assert count_launches(Untouchable("cuda"), frames) is None


def test_nothing_to_count_on_a_cpu():
    assert count_launches(Untouchable("cpu"), [torch.zeros(1)] * (SETTLE_FRAMES + 5)) is None
