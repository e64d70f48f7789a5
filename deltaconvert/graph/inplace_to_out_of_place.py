"""``inplace_to_out_of_place``: make every op of the private copy out of place.

Delta ops treat their inputs as read-only, and a dense island must not overwrite a
tensor another op still needs (a Densify's state, a value with several consumers).
Guarantees: no module has ``inplace=True``; no call passes ``inplace=True``; in-place
tensor methods (``x.add_(y)``, ``x.relu_()``) become their out-of-place forms. The
data flow is kept: uses of ``x`` after an in-place op on ``x`` read the op's result.
"""
from __future__ import annotations

import torch
from torch import fx, nn


def _is_inplace(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return getattr(modules[node.target], "inplace", False) is True
    if node.op in ("call_function", "call_method") and node.kwargs.get("inplace") is True:
        return True
    return (node.op == "call_method" and isinstance(node.target, str)
            and node.target.endswith("_") and not node.target.startswith("_")
            and hasattr(torch.Tensor, node.target[:-1]))


def _make_out_of_place(node: fx.Node, modules: dict[str, nn.Module]) -> None:
    if node.op == "call_module":
        modules[node.target].inplace = False
    elif "inplace" in node.kwargs:
        node.kwargs = {**node.kwargs, "inplace": False}
    else:
        node.target = node.target[:-1]


def inplace_to_out_of_place(gm: fx.GraphModule) -> fx.GraphModule:
    modules = dict(gm.named_modules(remove_duplicate=False))
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    for node in list(gm.graph.nodes):
        if not _is_inplace(node, modules):
            continue
        _make_out_of_place(node, modules)
        mutated = node.args[0] if node.args else None
        if isinstance(mutated, fx.Node):
            later = [u for u in mutated.users if u is not node and order[u] > order[node]]
            for user in later:
                user.replace_input_with(mutated, node)
    for module in gm.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return gm
