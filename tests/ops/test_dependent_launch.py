"""Programmatic dependent launches (``backends/cuda/dependent_launch.py``) change no
output bit: a model of every kind of list producer and consumer (two inverted residual
blocks) gives the same outputs with them on and off, eagerly and under CUDA-graph
replay, frame after frame."""
from __future__ import annotations

import pytest
import torch

from .test_work_lists import clip, converted_outputs

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_dependent_launches_change_no_output(runtime, monkeypatch, cuda_graph):
    from deltaconvert.backends.cuda import dependent_launch, kernels
    frames = clip()
    outputs = {}
    for dependent in (False, True):
        monkeypatch.setattr(dependent_launch, "ENABLED", dependent)
        monkeypatch.setattr(kernels, "_MODULES", {})  # load the modules again, for the
        monkeypatch.setattr(kernels, "_KERNELS", {})  # launch path this setting picks

        def check(launched):
            chosen = {k.dependent is not None for k in kernels._KERNELS.values()}
            assert chosen == {dependent}, "the kernels do not launch the way the switch says"

        outputs[dependent] = converted_outputs(frames, cuda_graph, check)
    for i, (on, off) in enumerate(zip(outputs[True], outputs[False])):
        assert torch.equal(on, off), f"frame {i + 2}: dependent launches changed the output"
