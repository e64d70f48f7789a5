"""``spatial_mean_to_global_pool``: ``x.mean([2, 3])`` on an image becomes global average
pooling (``nn.AdaptiveAvgPool2d(1)``, then ``flatten(1)`` unless ``keepdim``), an op
with a delta form, so classifier heads stay in the delta domain.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from .analysis import value_info
from .names import inherit, stable_name, unique_module_path


def _spatial_mean_keepdim(node: fx.Node) -> bool | None:
    """``keepdim`` if ``node`` averages a 4-D tensor over dims (2, 3), else None."""
    if not ((node.op == "call_method" and node.target == "mean")
            or (node.op == "call_function" and node.target is torch.mean)):
        return None
    source = node.args[0]
    if not isinstance(source, fx.Node) or value_info(source).rank != 4:
        return None
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not isinstance(dims, (list, tuple)) or sorted(d % 4 for d in dims) != [2, 3]:
        return None
    if "dtype" in node.kwargs:
        return None
    return bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))


def spatial_mean_to_global_pool(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        keepdim = _spatial_mean_keepdim(node)
        if keepdim is None:
            continue
        path = unique_module_path(gm, stable_name(node))
        gm.add_submodule(path, nn.AdaptiveAvgPool2d(1))
        with gm.graph.inserting_before(node):
            pooled = inherit(gm.graph.call_module(path, (node.args[0],)), node)
            result = pooled if keepdim else inherit(
                gm.graph.call_function(torch.flatten, (pooled, 1)), node, "_flatten")
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
    return gm
