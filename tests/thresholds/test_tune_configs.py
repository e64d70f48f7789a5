"""scripts/tune_configs.py --precision fp16: the budget is the benchmark's accuracy
criterion measured on the tuning clip, and the reference is the fp32 original."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from deltaconvert.metrics import relative_error
from deltaconvert.synthetic import synthetic_video

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "tune_configs.py"


@pytest.fixture(scope="module")
def tune_configs():
    spec = importlib.util.spec_from_file_location("tune_configs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


def test_fp16_budget_is_the_criterion_and_the_reference_is_fp32(tune_configs):
    model, frames = net(), synthetic_video(4, 16, 20, seed=5)
    budget, reference, extra = tune_configs.fp16_budget(model, frames, None)
    half = net().half()
    own = [relative_error(half(f.half()).float(), model(f)) for f in frames[1:]]
    assert extra["dense_fp16_error"] == pytest.approx(sum(own) / len(own))
    assert 0 < extra["dense_fp16_error"] < 0.02 and budget == 0.02  # max(2 %, fp16's own)
    with torch.no_grad():
        assert torch.equal(reference(frames[1].half()), model(frames[1].half().float()))
    assert reference(frames[1].half()).dtype == torch.float32
    assert tune_configs.fp16_budget(model, frames, 0.05)[0] == 0.05  # a given budget wins
    assert next(model.parameters()).dtype == torch.float32  # the original is not cast
