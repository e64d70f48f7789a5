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


# The decisions for the six launches of forward() below, per rule of
# DELTACONVERT_CUDA_PDL_EDGES: first, after our kernel, after torch's, after ours, after a
# memcpy node, after a join.
EDGE_DECISIONS = {
    "kernel": [False, True, True, True, False, False],
    "own": [False, True, False, True, False, False],
    "none": [False] * 6,
}


@pytest.mark.parametrize("rule", list(EDGE_DECISIONS))
def test_a_launch_takes_the_programmatic_edge_where_its_rule_allows(poisoned, monkeypatch, rule):
    """In a capture, a dependent launch asks for the programmatic edge only where its one
    upstream node is a kernel node (rule ``kernel``: ours or torch's; ``own``: ours only;
    ``none``: never), never as the capture's first node, nor after a memcpy node or a
    join of two streams. Under every rule the replayed graph computes what eager launches
    do."""
    from deltaconvert.backends.cuda import dependent_launch, kernels
    from deltaconvert.backends.cuda.pointwise import accumulate

    from .test_cuda_ops import random_delta
    monkeypatch.setattr(dependent_launch, "ENABLED", True)  # opt-in: on for this test
    monkeypatch.setattr(dependent_launch, "EDGES", rule)
    monkeypatch.setattr(kernels, "_MODULES", {})  # modules loaded again, with their
    monkeypatch.setattr(kernels, "_KERNELS", {})  # dependent functions
    gen = torch.Generator(device="cuda").manual_seed(5)
    shape = (1, 8, 6, 10)
    d = random_delta(shape, "random", torch.float16, gen, 0)
    start = torch.randn(shape, generator=gen, device="cuda")
    acc, copy = start.clone(), torch.empty_like(start)
    asked: list[bool] = []
    takes = dependent_launch.takes_edge

    def recorded(stream):
        asked.append(takes(stream))
        return asked[-1]

    monkeypatch.setattr(dependent_launch, "takes_edge", recorded)

    def forward():
        with poisoned.frame():
            accumulate(poisoned, "first", d, acc)          # the capture's first kernel
            accumulate(poisoned, "chained", d, acc)        # after our own kernel
            acc.mul_(1.0)
            accumulate(poisoned, "after torch", d, acc)    # after torch's kernel
            accumulate(poisoned, "chained", d, acc)
            copy.copy_(acc)                                # a memcpy node
            accumulate(poisoned, "after memcpy", d, acc)
            side, main = torch.cuda.Stream(), torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                copy.add_(1.0)
            main.wait_stream(side)
            accumulate(poisoned, "after a join", d, acc)

    forward()  # loads the kernels; no capture: nothing asked
    torch.cuda.synchronize()
    eager = acc.clone()
    assert asked == []
    acc.copy_(start)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        forward()
    assert asked == EDGE_DECISIONS[rule]
    acc.copy_(start)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(acc, eager)


def test_an_unknown_edge_rule_is_named_with_the_choices(monkeypatch):
    from deltaconvert.backends.cuda import dependent_launch
    monkeypatch.setattr(dependent_launch, "EDGES", "ours")
    with pytest.raises(ValueError, match="DELTACONVERT_CUDA_PDL_EDGES='ours'.*kernel, own, none"):
        dependent_launch.edge_rule()
