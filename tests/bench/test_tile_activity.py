"""scripts/tile_activity.py on the CPU: a conv's candidates are its input mask dilated by
its footprint (strided, padded, asymmetric), tiles count partial edge tiles, and the
per-conv means over a converted model's delta frames come from the ops' own inputs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from deltaconvert.convert import convert

from .scripts import load_script


@pytest.fixture(scope="module")
def activity():
    return load_script("tile_activity")


def test_candidates_dilate_the_mask_by_the_footprint(activity):
    mask = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    mask[0, 0, 4, 4] = True
    got = activity.candidates(mask, nn.Conv2d(1, 1, 3, padding=1))
    assert got.shape == (1, 1, 9, 9) and got.sum() == 9 and got[0, 0, 3:6, 3:6].all()
    strided = activity.candidates(mask, nn.Conv2d(1, 1, 3, stride=2, padding=1))
    assert strided.shape == (1, 1, 5, 5) and strided[0, 0].nonzero().tolist() == [[2, 2]]
    # padding="same" with an even kernel pads one more after than before
    even = activity.candidates(mask, nn.Conv2d(1, 1, 2, padding="same"))
    assert even[0, 0].nonzero().tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]
    corner = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    corner[0, 0, 0, 0] = True
    assert activity.candidates(corner, nn.Conv2d(1, 1, 5, padding=2)).sum() == 9  # clipped


def test_tile_fraction_counts_partial_tiles(activity):
    mask = torch.zeros(1, 1, 9, 17, dtype=torch.bool)  # 2 × 3 tiles of 8, partial at the edges
    assert activity.tile_fraction(mask) == 0.0
    mask[0, 0, 8, 16] = True                             # the corner tile of one pixel
    assert activity.tile_fraction(mask) == pytest.approx(1 / 6)
    mask[0, 0, 0, 0] = True
    assert activity.tile_fraction(mask) == pytest.approx(2 / 6)
    assert activity.tile_fraction(mask, 4) == pytest.approx(2 / 15)  # 3 × 5 tiles of 4


def test_means_over_the_delta_frames(activity):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    frames = [torch.randn(1, 3, 16, 16)]
    for t in range(3):  # frame t changes one pixel: row 2t, column 5
        x = frames[-1].clone()
        x[0, :, 2 * t, 5] += 1.0
        frames.append(x)
    model = convert(net, frames[0], backend="reference")
    rows = activity.tile_activity(model, frames, skip=0)
    first = rows["0"]
    assert first["weight"] == [4, 3, 3, 3] and first["out"] == [16, 16]
    # one changed pixel → its 3×3 neighbourhood (clipped at row 0 on the first frame)
    assert first["candidates"] == pytest.approx((6 + 9 + 9) / 3 / 256)
    assert 0 < first["candidates"] < first["tiles"] <= 1
