"""Programmatic dependent launches (``backends/cuda/dependent_launch.py``) change no
output bit: a model of every kind of list producer and consumer (two inverted residual
blocks) gives the same outputs with them on and off, eagerly and under CUDA-graph
replay, frame after frame. They are launched while a graph is captured, and only then:
eager frames launch through PyCUDA."""
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
    launches = {False: 0, True: 0}
    launch = dependent_launch.DependentFunction.launch

    def counted(self, *args):
        launches[torch.cuda.is_current_stream_capturing()] += 1
        launch(self, *args)

    monkeypatch.setattr(dependent_launch.DependentFunction, "launch", counted)
    for dependent in (False, True):
        monkeypatch.setattr(dependent_launch, "ENABLED", dependent)
        monkeypatch.setattr(kernels, "_MODULES", {})  # load the modules again, for the
        monkeypatch.setattr(kernels, "_KERNELS", {})  # launch path this setting picks

        def check(launched):
            chosen = {k.dependent is not None for k in kernels._KERNELS.values()}
            assert chosen == {dependent}, "the kernels do not launch the way the switch says"

        outputs[dependent] = converted_outputs(frames, cuda_graph, check)
    assert launches[False] == 0, "an eager frame launched a kernel as a dependent launch"
    assert (launches[True] > 0) is cuda_graph, "the captured frame launched no dependent launch"
    for i, (on, off) in enumerate(zip(outputs[True], outputs[False])):
        assert torch.equal(on, off), f"frame {i + 2}: dependent launches changed the output"
