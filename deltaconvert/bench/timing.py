"""The dense baselines' CUDA-graph replay (:class:`GraphReplay`): a callable captured once
in a CUDA graph; each call copies its input into the captured input and replays the
graph. Per-call timing is :mod:`deltaconvert.timing`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

WARMUP_CALLS = 3  # calls on a side stream before capture (cuDNN autotuning, allocator)


class GraphReplay:
    """``fn`` captured in a CUDA graph on ``example``'s device.

    The constructor runs ``fn`` :data:`WARMUP_CALLS` times on a side stream, then captures
    one call on a copy of ``example`` (same dtype and memory format) under the caller's
    grad mode. Calling the object copies ``x`` into that input (converting its dtype and
    layout), replays the graph and returns the captured output tensors, which the next
    call overwrites.
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], example: torch.Tensor) -> None:
        if example.device.type != "cuda":
            raise RuntimeError(f"a CUDA graph needs a CUDA tensor, got one on {example.device}")
        device = example.device
        self.static_in = example.clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                fn(self.static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_out = fn(self.static_in)

    def __call__(self, x: torch.Tensor) -> Any:
        self.static_in.copy_(x)
        self.graph.replay()
        return self.static_out
