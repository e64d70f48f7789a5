"""``swap_to_delta_ops``: replace each planned node by its delta op and build the converted
module tree.

Guarantees: every delta op and every remaining dense module is installed at the node's
stable name (``model.get_submodule("layer1.0.relu_1")``), each node has its own op
instance (a module called from several sites gets one op per site), and parameters
read by ``get_attr`` keep their paths — unless an op or module sits on that path or
above it (a module both called and read from, ``self.proj(x)`` and
``self.proj.weight.device``), then they move to a free ``dc_attr_…`` path. Nothing of
the traced modules is shared with the result except by copy.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

from ..ops.base import DeltaOp
from .names import stable_name


def _install(root: nn.Module, path: str, value: nn.Module | torch.Tensor) -> None:
    *parents, leaf = path.split(".")
    owner = root
    for part in parents:
        if not hasattr(owner, part):
            owner.add_module(part, nn.Module())
        owner = getattr(owner, part)
        if isinstance(owner, DeltaOp):
            raise RuntimeError(f"cannot install {path}: {part} is an op")
    if hasattr(owner, leaf):
        raise RuntimeError(f"cannot install {path}: the name is taken")
    if isinstance(value, nn.Module):
        owner.add_module(leaf, value)
    elif isinstance(value, nn.Parameter):
        owner.register_parameter(leaf, value)
    else:
        owner.register_buffer(leaf, value)


def _attribute(gm: fx.GraphModule, path: str):
    obj = gm
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def swap_to_delta_ops(gm: fx.GraphModule, ops: dict[fx.Node, DeltaOp]) -> tuple[nn.Module, fx.Graph]:
    """The root module (ops at stable names) and the rewritten graph."""
    root = nn.Module()
    graph = gm.graph
    for node in graph.nodes:
        if node in ops:
            name = stable_name(node)
            op = ops[node]
            op.node_name = name
            _install(root, name, op)
            node.op, node.target = "call_module", name
        elif node.op == "call_module":
            name = stable_name(node)
            _install(root, name, copy.deepcopy(gm.get_submodule(node.target)))
            node.target = name
    installed = {node.target for node in graph.nodes if node.op == "call_module"}
    for node in graph.nodes:
        if node.op == "get_attr":
            value = copy.deepcopy(_attribute(gm, node.target))
            if _on_installed_path(root, node.target, installed):
                node.target = _free_path(root, "dc_attr_" + node.target.replace(".", "_"))
            _install(root, node.target, value)
    return root, graph


def _on_installed_path(root: nn.Module, path: str, installed: set[str]) -> bool:
    parts = path.split(".")
    prefixes = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    if prefixes & installed:
        return True
    try:
        _attribute(root, path)
    except AttributeError:
        return False
    return True


def _free_path(root: nn.Module, base: str) -> str:
    path, i = base, 1
    while hasattr(root, path):
        path, i = f"{base}_{i}", i + 1
    return path
