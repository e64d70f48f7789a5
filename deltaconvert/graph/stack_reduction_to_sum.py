"""``stack_reduction_to_sum``: ``torch.stack(xs, d).sum(d)`` becomes ``x₀ + x₁ + …``.

``Σ_k stack(x_0 … x_{K−1}, d)[…, k, …] = Σ_k x_k`` and the mean is that sum over K, for
any ``d``: the reduction removes exactly the dim the stack added. The rewritten form is
a chain of adds (and one scaling by ``1/K`` for a mean), which are linear delta ops;
weighted sums of feature maps (BiFPN's fast normalised fusion,
``torch.stack([w₀·x₀, w₁·x₁], -1).sum(-1)`` with weights folded to constants) thus
stay in the delta domain, where the stacked tensor, whose extra dim is neither
channels nor pixels, has no delta form. Applies to ``torch.sum``/``torch.mean`` and
``Tensor.sum``/``Tensor.mean`` over the stacked dim alone, without ``keepdim`` or
``dtype``; the stack itself stays for any other user.
"""
from __future__ import annotations

import operator

import torch
from torch import fx

from .analysis import call_entry, value_info
from .names import inherit

REDUCTIONS = {torch.sum: "sum", torch.mean: "mean", "sum": "sum", "mean": "mean"}


def _stacked_items(node: fx.Node) -> list[fx.Node] | None:
    """The stacked tensors if ``node`` reduces a ``torch.stack`` over its stacked dim."""
    stack = node.args[0] if node.args else None
    if not (isinstance(stack, fx.Node) and stack.op == "call_function"
            and stack.target is torch.stack):
        return None
    items = stack.args[0] if stack.args else stack.kwargs.get("tensors")
    stack_dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dim = dim[0] if isinstance(dim, (tuple, list)) and len(dim) == 1 else dim
    extra = set(node.kwargs) - {"dim"}
    if (not isinstance(items, (list, tuple)) or not items or len(node.args) > 2 or extra
            or not isinstance(dim, int) or not isinstance(stack_dim, int)):
        return None
    rank = value_info(stack).rank
    if dim % rank != stack_dim % rank:
        return None
    return list(items)


def sum_of(gm: fx.GraphModule, node: fx.Node, items: list[fx.Node], kind: str) -> fx.Node:
    """Insert ``items[0] + items[1] + …`` (divided by ``len(items)`` when ``kind`` is
    ``"mean"``) before ``node``, named after it; returns the result node."""
    with gm.graph.inserting_before(node):
        total = items[0]
        for i, item in enumerate(items[1:], start=1):
            total = inherit(gm.graph.call_function(operator.add, (total, item)), node, f"_add{i}")
        if kind == "mean":
            total = inherit(gm.graph.call_function(operator.truediv, (total, len(items))),
                            node, "_mean")
    return total


def stack_reduction_to_sum(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        kind = call_entry(node, REDUCTIONS)
        items = _stacked_items(node) if kind else None
        if items is None:
            continue
        node.replace_all_uses_with(sum_of(gm, node, items, kind))
        gm.graph.erase_node(node)
    return gm
