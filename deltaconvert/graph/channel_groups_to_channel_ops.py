"""``channel_groups_to_channel_ops``: ops over channels split into groups become ops on the
channels of the map (split attention, selective kernels).

A *channel-group view* of a map ``x`` of shape ``(N, C, *s)`` is a chain of
view/reshape/transpose/… ``t`` of ``x`` with ``t.shape[:2] == (N, R)``, ``R`` dividing
``C``, whose elements are those of ``x' = x[:, index]`` (a channel permutation; mostly
the identity) in ``x'``'s order: ``t[:, r]`` holds the channels ``r·K … (r+1)·K − 1`` of
``x'``, ``K = C/R``. It is *plain* when ``t = x.unflatten(1, (R, K))``. ResNeSt writes
``x.reshape(N, R, K, H, W)`` and, for its attention vector,
``a.view(N, G, R, −1).transpose(1, 2)``. ``torch.stack(xs, d)`` is rewritten first to
``torch.cat(xs, d).unflatten(d, …)`` (linear delta ops) for every dim but the batch and
the new last one; at ``d = 1`` (selective kernels) that is the plain view of the cat.
Ops over the group dim have channel forms, each a delta op of 4-D maps:

* ``Σ_r t[:, r]`` (sum/mean over dim 1 of a plain view) ``= Σ_r x[:, r·K:(r+1)·K]``: a
  chain of adds of channel slices (``torch.split``), divided by ``R`` for a mean;
* ``softmax(t, 1) = ChannelGroupSoftmax(R)(x')``, flattened and unflattened to ``t``'s
  shape: a per-pixel softmax across the channel groups (``x' = x[:, index]`` a
  ChannelGather when the index is not the identity);
* ``t₁ ⊙ t₂`` (``*``, ``+``, ``−``) of plain views with the same ``(R, K)`` whose spatial
  dims broadcast ``= (x₁ ⊙ x₂).unflatten(1, (R, K))``: element-wise ops commute with the
  same split of the channels.

Rewrites run in graph order and each leaves a channel-group view of a channel op, so
split attention's ``(x.view(…) · softmax(a.view(…), 1)).sum(1)`` resolves from its
inputs down; the views left over are dead or collapsed by
``rearrangement_chain_to_canonical_op``, which runs after. Other calls are unchanged.
"""
from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any

import torch
from torch import fx, nn

from ..layers import ChannelGroupSoftmax
from ..ops.linear import ChannelGather
from .analysis import ValueInfo, call_entry, value_info
from .names import inherit, stable_name, unique_module_path
from .rearrangement_chain_to_canonical_op import canonical_map, rearrangement_path, run_rearrangement
from .stack_reduction_to_sum import REDUCTIONS, sum_of

_ELEMENTWISE = dict.fromkeys((operator.mul, torch.mul, "mul", operator.add, torch.add, "add",
                              operator.sub, torch.sub, "sub"), True)


@dataclasses.dataclass
class _GroupView:
    source: fx.Node  # the map x, (N, C, *s)
    index: torch.Tensor | None  # x' = x[:, index]; None: the identity
    groups: int  # R
    plain: bool  # the view is x.unflatten(1, (R, C/R))


def _group_view(node: Any) -> _GroupView | None:
    """``node`` as a channel-group view of the map it rearranges, or None."""
    if not isinstance(node, fx.Node):
        return None
    source, path = rearrangement_path(node)
    shape = value_info(source).shape
    if not path or shape is None or len(shape) < 2:
        return None
    value = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    for step in path:
        value = run_rearrangement(step, value)
    view = tuple(value.shape)
    if (len(view) < 3 or view[0] != shape[0] or shape[1] % view[1]
            or value.numel() != math.prod(shape)):
        return None
    kind = canonical_map(shape, value.reshape(shape))
    if kind is None or kind[0] != "gather":
        return None
    index = kind[1]
    identity = torch.equal(index, torch.arange(shape[1]))
    plain = identity and view == (shape[0], view[1], shape[1] // view[1], *shape[2:])
    return _GroupView(source, None if identity else index, view[1], plain)


def _info(template: ValueInfo, shape: tuple[int, ...] | None = None, kind: str = "tensor"
          ) -> ValueInfo:
    return dataclasses.replace(template, kind=kind, shape=shape if kind == "tensor" else None)


def _call_module(gm: fx.GraphModule, near: fx.Node, suffix: str, module: nn.Module,
                 arg: fx.Node) -> fx.Node:
    path = unique_module_path(gm, stable_name(near) + suffix)
    gm.add_submodule(path, module)
    node = inherit(gm.graph.call_module(path, (arg,)), near, suffix)
    node.meta["dc_value"] = value_info(arg)
    return node


def _stack_to_cat(gm: fx.GraphModule, node: fx.Node) -> None:
    """``torch.stack(xs, d)`` → ``torch.cat(xs, d).unflatten(d, (len(xs), xs[0].shape[d]))``
    for a dim ``d`` of the items other than the batch (both put item ``k``'s element
    ``[…, i, …]`` at ``[…, k, i, …]``); at ``d = 1`` the plain channel-group view of a cat."""
    if node.op != "call_function" or node.target is not torch.stack:
        return
    items = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    shape = value_info(node).shape
    if not isinstance(items, (list, tuple)) or not isinstance(dim, int) or shape is None:
        return
    dim %= len(shape)
    if not 1 <= dim < len(shape) - 1:
        return
    merged = (*shape[:dim], shape[dim] * shape[dim + 1], *shape[dim + 2:])
    with gm.graph.inserting_before(node):
        cat = inherit(gm.graph.call_function(torch.cat, (list(items), dim)), node, "_cat")
        cat.meta["dc_value"] = _info(value_info(node), merged)
        split = inherit(gm.graph.call_function(torch.unflatten, (cat, dim, shape[dim:dim + 2])),
                        node)
    split.meta["dc_value"] = value_info(node)
    node.replace_all_uses_with(split)
    gm.graph.erase_node(node)


def _softmax_over_groups(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    if node.op != "call_module":
        return None
    module = gm.get_submodule(node.target)
    view = _group_view(node.args[0]) if type(module) is nn.Softmax else None
    if view is None or module.dim is None or module.dim % value_info(node).rank != 1:
        return None
    shape = value_info(node).shape
    with gm.graph.inserting_before(node):
        x = view.source
        if view.index is not None:
            gather = ChannelGather(view.index.to(value_info(x).device))
            x = _call_module(gm, node, "_order", gather, x)
        y = _call_module(gm, node, "_groups", ChannelGroupSoftmax(view.groups), x)
        flat = inherit(gm.graph.call_function(torch.flatten, (y, 1)), node, "_flatten")
        flat.meta["dc_value"] = _info(value_info(node), (shape[0], math.prod(shape[1:])))
        out = inherit(gm.graph.call_function(torch.unflatten, (flat, 1, shape[1:])), node)
    out.meta["dc_value"] = value_info(node)
    return out


def _elementwise_of_views(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    if not call_entry(node, _ELEMENTWISE) or len(node.args) != 2 or node.kwargs:
        return None
    views = [_group_view(arg) for arg in node.args]
    if any(v is None or not v.plain for v in views):
        return None
    channels = {value_info(v.source).shape[1] for v in views}
    if len({v.groups for v in views}) != 1 or len(channels) != 1:
        return None
    out = value_info(node).shape
    with gm.graph.inserting_before(node):
        y = inherit(gm.graph.create_node(node.op, node.target, tuple(v.source for v in views)),
                    node, "_channels")
        y.meta["dc_value"] = _info(value_info(node), (out[0], out[1] * out[2], *out[3:]))
        split = inherit(gm.graph.call_function(torch.unflatten, (y, 1, tuple(out[1:3]))), node)
    split.meta["dc_value"] = value_info(node)
    return split


def _reduction_over_groups(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    kind = call_entry(node, REDUCTIONS)
    if kind is None or not node.args or len(node.args) > 2 or set(node.kwargs) - {"dim"}:
        return None
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dim = dim[0] if isinstance(dim, (tuple, list)) and len(dim) == 1 else dim
    if not isinstance(dim, int) or dim % value_info(node.args[0]).rank != 1:
        return None
    view = _group_view(node.args[0])
    if view is None or not view.plain:
        return None
    info = value_info(node)
    with gm.graph.inserting_before(node):
        split = inherit(gm.graph.call_function(torch.split, (view.source, info.shape[1], 1)),
                        node, "_split")
        split.meta["dc_value"] = _info(info, kind="container")
        items = []
        for r in range(view.groups):
            item = inherit(gm.graph.call_function(operator.getitem, (split, r)), node, f"_group{r}")
            item.meta["dc_value"] = info
            items.append(item)
    total = sum_of(gm, node, items, kind)
    total.meta["dc_value"] = info
    return total


_REWRITES = (_softmax_over_groups, _elementwise_of_views, _reduction_over_groups)


def channel_groups_to_channel_ops(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        _stack_to_cat(gm, node)
    for node in list(gm.graph.nodes):
        if not value_info(node).varying:
            continue
        for rewrite in _REWRITES:
            replacement = rewrite(gm, node)
            if replacement is not None:
                node.replace_all_uses_with(replacement)
                gm.graph.erase_node(node)
                break
    return gm
