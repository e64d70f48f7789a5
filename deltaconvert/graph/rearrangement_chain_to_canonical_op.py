"""``rearrangement_chain_to_canonical_op``: collapse chains of view/reshape/transpose/permute/
squeeze/unsqueeze/indexing (and items of a split/chunk inside such a chain) into one op
with a delta form.

A chain of pure rearrangements maps input elements to output elements. Every chain that
ends at a node is considered, also when its nodes have other users (the query, key and
value of an attention block split from one tensor). Running it on
a probe tensor of element ids (at the example shape) tells which map it is. The pass
recognises three maps that do not depend on the batch size or resolution:

* a channel gather (same batch and spatial positions, output channel ``c`` reads input
  channel ``index[c]``): ShuffleNet's channel shuffle, ``x[:, 0:1]``,
  ``x[:, 0].unsqueeze(1)`` → :class:`~deltaconvert.ops.linear.ChannelGather`, or the
  input itself when every channel stays in place (a view and its inverse);
* ``torch.flatten(x, 1)`` (``x.view(x.size(0), -1)``);
* ``(N, C)`` ↔ ``(N, C, 1, …, 1)`` reshapes of one-pixel tensors (squeeze-excite heads
  written with ``view``) → ``torch.flatten`` / ``torch.unflatten``.

Guarantee: the replacement computes the same values; chains matching none of these are
left unchanged.
"""
from __future__ import annotations

import math
import operator
from typing import Any

import torch
from torch import fx

from ..ops.linear import ChannelGather
from .analysis import value_info
from .names import inherit, stable_name, unique_module_path

_METHODS = {"contiguous", "view", "reshape", "transpose", "permute", "flatten", "unflatten", "squeeze",
            "unsqueeze", "movedim", "swapaxes", "swapdims", "view_as", "reshape_as"}
_FUNCTIONS = {torch.reshape, torch.transpose, torch.permute, torch.flatten, torch.unflatten,
              torch.squeeze, torch.unsqueeze, torch.movedim, torch.swapaxes, operator.getitem}
_SPLITS = {("call_function", torch.split), ("call_function", torch.chunk),
           ("call_method", "split"), ("call_method", "chunk")}


def _split_of(node: fx.Node) -> fx.Node | None:
    """The ``split``/``chunk`` call if ``node`` takes an item of its result."""
    if not (node.op == "call_function" and node.target is operator.getitem and node.args
            and isinstance(node.args[0], fx.Node) and isinstance(node.args[1], int)):
        return None
    split = node.args[0]
    if (split.op, split.target) in _SPLITS and split.args and isinstance(split.args[0], fx.Node):
        return split
    return None


def rearranged_input(node: fx.Node) -> fx.Node:
    """The tensor a rearrangement reads: its first argument, or for an item of a
    ``split``/``chunk`` the tensor that was split."""
    split = _split_of(node)
    return node.args[0] if split is None else split.args[0]


def is_rearrangement(node: fx.Node) -> bool:
    """Whether ``node`` only moves, selects or reshapes the elements of one tensor (every
    other argument being a constant): a view/reshape/transpose/…/indexing call, or an
    item of a ``split``/``chunk`` of a tensor."""
    split = _split_of(node)
    if split is not None:
        call = split
    elif node.op == "call_method" and node.target in _METHODS:
        call = node
    elif node.op == "call_function" and node.target in _FUNCTIONS:
        call = node
    else:
        return False
    if not call.args or not isinstance(call.args[0], fx.Node):
        return False
    if value_info(node).kind != "tensor" or value_info(call.args[0]).kind != "tensor":
        return False
    others = [n for n in call.all_input_nodes if n is not call.args[0]]
    return all(value_info(n).kind == "other" for n in others)


def run_rearrangement(node: fx.Node, value: torch.Tensor) -> torch.Tensor:
    """``node``'s rearrangement applied to ``value`` in place of the tensor it reads."""
    split = _split_of(node)
    call = node if split is None else split

    def resolve(arg: Any) -> Any:
        if arg is call.args[0]:
            return value
        return value_info(arg).constant if isinstance(arg, fx.Node) else arg
    args = fx.node.map_arg(call.args, resolve)
    kwargs = fx.node.map_arg(call.kwargs, resolve)
    fn = getattr(torch.Tensor, call.target) if call.op == "call_method" else call.target
    result = fn(*args, **kwargs)
    return result if split is None else result[node.args[1]]


def rearrangement_path(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """``(source, path)``: the rearrangements ``path`` (in order, ending at ``node``; empty
    if ``node`` is none) that lead from ``source``, the first value that is not one."""
    path: list[fx.Node] = []
    while is_rearrangement(node):
        path.insert(0, node)
        node = rearranged_input(node)
    return node, path


def canonical_map(shape: tuple[int, ...], ids: torch.Tensor) -> tuple[str, Any] | None:
    """Classify the map from an input of ``shape`` to the element ids ``ids``:
    ``("gather", index)``, ``("flatten", None)``, ``("unflatten", sizes)`` or None."""
    n, c = shape[0], shape[1]
    spatial = shape[2:]
    out = tuple(ids.shape)
    if len(out) < 2 or out[0] != n:
        return None
    source = ids.long()
    if out[2:] == spatial and len(out) == len(shape):
        per_sample = math.prod(shape[1:])
        pixels = math.prod(spatial)
        src_n = source // per_sample
        src_c = (source % per_sample) // pixels
        src_p = source % pixels
        n_ids = torch.arange(n).view(n, *([1] * (len(out) - 1)))
        p_ids = torch.arange(pixels).view(1, 1, *spatial) if spatial else torch.zeros(1, 1)
        index = src_c[0, :].reshape(out[1], -1)[:, 0]
        expected_c = index.view(1, -1, *([1] * len(spatial)))
        if (src_n == n_ids).all() and (src_p == p_ids).all() and (src_c == expected_c).all():
            return "gather", index
        return None
    flat = torch.arange(ids.numel()).view(n, -1)
    if not torch.equal(source.reshape(n, -1), flat):
        return None
    if len(out) == 2 and out[1] == math.prod(shape[1:]):
        return "flatten", None
    if out[1] == c and math.prod(out[2:]) == 1 and math.prod(spatial) == 1:
        return "unflatten", (c, *out[2:])
    return None


def rearrangement_chain_to_canonical_op(gm: fx.GraphModule) -> fx.GraphModule:
    # Last node first: a path is replaced as a whole (its earlier nodes then die), and a
    # path shared by several users (the items of one split) is followed from each.
    for end in reversed(list(gm.graph.nodes)):
        if not end.users or not is_rearrangement(end):
            continue
        source, path = rearrangement_path(end)
        shape = value_info(source).shape
        moves = [step for step in path if step.target != "contiguous" and _split_of(step) is None]
        if not value_info(source).varying or shape is None or len(shape) < 2 or not moves:
            continue  # nothing moved, or plain split items (delta ops of their own)
        value = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
        for step in path:
            value = run_rearrangement(step, value)
        found = canonical_map(shape, value)
        if found is None:
            continue
        kind, detail = found
        if kind == "gather" and torch.equal(detail, torch.arange(shape[1])):
            end.replace_all_uses_with(source)
            gm.graph.erase_node(end)
            continue
        with gm.graph.inserting_after(end):
            if kind == "gather":
                attr = unique_module_path(gm, stable_name(end))
                gm.add_submodule(attr, ChannelGather(detail.to(value_info(source).device)))
                replacement = gm.graph.call_module(attr, (source,))
            elif kind == "flatten":
                replacement = gm.graph.call_function(torch.flatten, (source, 1))
            else:
                replacement = gm.graph.call_function(torch.unflatten, (source, 1, detail))
        inherit(replacement, end)
        replacement.meta["dc_value"] = value_info(end)
        end.replace_all_uses_with(replacement)
        gm.graph.erase_node(end)
    return gm
