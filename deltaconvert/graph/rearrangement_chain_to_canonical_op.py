"""``rearrangement_chain_to_canonical_op``: collapse chains of view/reshape/transpose/permute/
squeeze/unsqueeze/indexing into one op with a delta form.

A chain of pure rearrangements maps input elements to output elements. Running it on
a probe tensor of element ids (at the example shape) tells which map it is. The pass
recognises three maps that do not depend on the batch size or resolution:

* a channel gather (same batch and spatial positions, output channel ``c`` reads input
  channel ``index[c]``): ShuffleNet's channel shuffle, ``x[:, 0:1]``,
  ``x[:, 0].unsqueeze(1)`` → :class:`~deltaconvert.ops.linear.ChannelGather`;
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


def _is_rearrangement(node: fx.Node) -> bool:
    if node.op == "call_method":
        known = node.target in _METHODS
    elif node.op == "call_function":
        known = node.target in _FUNCTIONS
    else:
        return False
    if not known or not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if value_info(node).kind != "tensor" or value_info(node.args[0]).kind != "tensor":
        return False
    others = [n for n in node.all_input_nodes if n is not node.args[0]]
    return all(value_info(n).kind == "other" for n in others)


def _run(node: fx.Node, value: torch.Tensor) -> torch.Tensor:
    def resolve(arg: Any) -> Any:
        if arg is node.args[0]:
            return value
        return value_info(arg).constant if isinstance(arg, fx.Node) else arg
    args = fx.node.map_arg(node.args, resolve)
    kwargs = fx.node.map_arg(node.kwargs, resolve)
    fn = getattr(torch.Tensor, node.target) if node.op == "call_method" else node.target
    return fn(*args, **kwargs)


def _canonical(shape: tuple[int, ...], ids: torch.Tensor) -> tuple[str, Any] | None:
    """Classify the map from an input of ``shape`` to the element ids ``ids``."""
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


def _chain_from(head: fx.Node) -> list[fx.Node]:
    chain = [head]
    while len(chain[-1].users) == 1:
        (user,) = chain[-1].users
        if not _is_rearrangement(user) or user.args[0] is not chain[-1]:
            break
        chain.append(user)
    return chain


def rearrangement_chain_to_canonical_op(gm: fx.GraphModule) -> fx.GraphModule:
    for head in list(gm.graph.nodes):
        if not _is_rearrangement(head):
            continue
        source = head.args[0]
        if _is_rearrangement(source) or not value_info(source).varying:
            continue
        shape = value_info(source).shape
        if len(shape) < 2:
            continue
        value = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
        found = None
        moved = False
        for end in _chain_from(head):
            value = _run(end, value)
            moved = moved or end.target != "contiguous"
            kind = _canonical(shape, value)
            if kind is not None and moved:
                found = (end, kind)
        if found is None:
            continue
        end, (kind, detail) = found
        with gm.graph.inserting_after(end):
            if kind == "gather":
                path = unique_module_path(gm, stable_name(end))
                gm.add_submodule(path, ChannelGather(detail.to(value_info(source).device)))
                replacement = gm.graph.call_module(path, (source,))
            elif kind == "flatten":
                replacement = gm.graph.call_function(torch.flatten, (source, 1))
            else:
                replacement = gm.graph.call_function(torch.unflatten, (source, 1, detail))
        inherit(replacement, end)
        replacement.meta["dc_value"] = value_info(end)
        end.replace_all_uses_with(replacement)
    return gm
