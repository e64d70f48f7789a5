"""Programmatic dependent launches (``backends/cuda/dependent_launch.py``) change no
output bit: a model of every kind of list producer and consumer (two inverted residual
blocks) gives the same outputs with them on and off, eagerly and under CUDA-graph
replay, frame after frame."""
from __future__ import annotations

import os

import pytest
import torch

from .test_work_lists import clip, converted, launched_kernels

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_dependent_launches_change_no_output(runtime, monkeypatch, cuda_graph):
    from deltaconvert.backends.cuda import dependent_launch, kernels
    if cuda_graph and os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING") == "1":
        pytest.skip("CUDA-graph capture needs torch's caching allocator (off under the sanitizer)")
    frames = clip()
    outputs = {}
    for dependent in (False, True):
        monkeypatch.setattr(dependent_launch, "ENABLED", dependent)
        monkeypatch.setattr(kernels, "_MODULES", {})  # load the modules again, for the
        monkeypatch.setattr(kernels, "_KERNELS", {})  # launch path this setting picks
        model = converted()
        model(frames[0])
        launched_kernels(model, frames[1])
        chosen = {k.dependent is not None for k in kernels._KERNELS.values()}
        assert chosen == {dependent}, "the kernels do not launch the way the switch says"
        if cuda_graph:
            model.cuda_graph = True
        outputs[dependent] = [model(f).clone() for f in frames[2:]]
    for i, (on, off) in enumerate(zip(outputs[True], outputs[False])):
        assert torch.equal(on, off), f"frame {i + 2}: dependent launches changed the output"
