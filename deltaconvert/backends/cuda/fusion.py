"""The epilogue-fusion plan of a converted model (bind-time analysis; the graph is not
changed).

A *linear producer* — an op whose kernel family declares ``fuses=True`` (convolution,
add/sub/neg/multiplication by a constant, channel scale) — is fused with its consumer when the consumer is a
Nonlinear per-pixel op with one varying input, that input is the producer's output, and
the producer has no other user. At run time the producer then writes no values: its
work is done inside the consumer's accumulate-recompute-truncate kernel (see
:class:`~deltaconvert.backends.cuda.base.Fused`).
"""
from __future__ import annotations

from typing import Callable

from torch import fx

from ...ops.base import DeltaOp
from ...ops.footprint import Footprint
from ...ops.nonlinear import Nonlinear
from ..runtime import DeltaOpGraph


def _op(gm: DeltaOpGraph, node: fx.Node) -> DeltaOp | None:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    return module if isinstance(module, DeltaOp) else None


def fusion_pairs(gm: DeltaOpGraph, fuses: Callable[[DeltaOp], bool]) -> dict[str, str]:
    """Producer op name → consumer op name, for every fusable pair; ``fuses(op)``: whether
    ``op`` is a linear producer able to hand its work to a consumer."""
    pairs = {}
    for node in gm.graph.nodes:
        consumer = _op(gm, node)
        if (not isinstance(consumer, Nonlinear) or consumer.footprint is not Footprint.POINTWISE
                or consumer.varying != (True,) or len(node.args) != 1 or node.kwargs):
            continue
        source = node.args[0]
        if not isinstance(source, fx.Node) or len(source.users) != 1:
            continue
        producer = _op(gm, source)
        if producer is not None and fuses(producer):
            pairs[source.target] = node.target
    return pairs


def operand_sources(gm: DeltaOpGraph, name: str) -> list[tuple[str, DeltaOp, int]] | None:
    """``(name, op, users)`` of the delta op producing each positional argument of the op
    ``name``, in order; None if an argument is not a delta op's output (a constant, a
    graph input) or the op has keyword arguments."""
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.target == name:
            if node.kwargs:
                return None
            sources = []
            for arg in node.args:
                op = _op(gm, arg) if isinstance(arg, fx.Node) else None
                if op is None:
                    return None
                sources.append((arg.target, op, len(arg.users)))
            return sources
    return None
