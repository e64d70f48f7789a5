"""The frame arena (``backends/cuda/arena.py``) on the CPU: regions are zero at every
frame start, laid out on first request without disturbing the regions already handed
out, a key asked for twice in one frame gets two tensors, and a size change gets a new
region."""
from __future__ import annotations

import torch

from deltaconvert.backends.cuda.arena import FrameArena, zeroed_mask

CPU = torch.device("cpu")


def test_regions_are_zero_at_every_frame_start():
    arena = FrameArena(CPU, 2)
    for frame in range(4):
        arena.begin_frame()
        flags = arena.zeroed(("a", "flags"), (5,), torch.int32)
        mask = arena.zeroed(("a", "mask"), (2, 1, 3, 3), torch.bool)
        assert torch.count_nonzero(flags) == 0 and not mask.any(), f"frame {frame}: not zero"
        assert flags.data_ptr() % 16 == 0 and mask.data_ptr() % 16 == 0
        flags.fill_(frame + 1)
        mask.fill_(True)
        arena.counts.fill_(3)
    arena.begin_frame()
    assert torch.count_nonzero(arena.counts) == 0


def test_growth_keeps_the_regions_already_handed_out():
    arena = FrameArena(CPU, 1)
    arena.begin_frame()
    first = arena.zeroed("a", (16,), torch.uint8)
    first.fill_(1)
    grown = [arena.zeroed(("b", i), (100,), torch.int32) for i in range(5)]  # reallocates
    assert arena.nbytes() >= 16 + 5 * 400 + 4
    assert all(torch.count_nonzero(g) == 0 for g in grown), "a new region is not zero"
    assert torch.equal(first, torch.ones(16, dtype=torch.uint8)), "growth moved a live region"
    arena.begin_frame()
    again = arena.zeroed("a", (16,), torch.uint8)
    after = arena.zeroed(("b", 0), (100,), torch.int32)
    assert after.data_ptr() == again.data_ptr() + 16, "the layout changed with the buffer"
    assert torch.count_nonzero(again) == 0 and torch.count_nonzero(after) == 0


def test_a_key_twice_in_one_frame_gets_two_tensors():
    arena = FrameArena(CPU, 1)
    arena.begin_frame()
    one = arena.zeroed("k", (4,), torch.int32)
    two = arena.zeroed("k", (4,), torch.int32)
    one.fill_(1)
    assert torch.count_nonzero(two) == 0, "the second request shares the first one's memory"


def test_a_size_change_gets_a_new_region():
    arena = FrameArena(CPU, 1)
    arena.begin_frame()
    arena.zeroed("a", (4,), torch.int32)
    arena.zeroed("b", (4,), torch.int32)
    arena.begin_frame()
    bigger = arena.zeroed("a", (9,), torch.int32)
    other = arena.zeroed("b", (4,), torch.int32)
    bigger.fill_(5)
    assert torch.count_nonzero(other) == 0, "the new size overlaps another region"


def test_zeroed_mask_without_an_arena():
    mask = zeroed_mask(None, "op", (2, 3, 4, 5), CPU)
    assert mask.shape == (2, 1, 4, 5) and mask.dtype == torch.bool and not mask.any()
