"""``assign_stable_names``: give every node a human-readable name that survives conversion.

The scheme is torchvision's ``get_graph_node_names``: a module call is named by the
module's qualified path (``layer1.0.conv1``); a function or method call by the path of
the module whose ``forward`` made it plus the op (``layer1.0.add``); repeats in one
scope get ``_1``, ``_2``, … (``layer1.0.relu_1`` is the second call of
``layer1.0.relu``). Names are stored in ``node.meta["dc_name"]``; passes that replace
a node hand its name to the replacement (:func:`inherit`).

A name whose first part is taken by an attribute of the converted model's class
(``x.to(...)`` or ``x.float()`` at the top level, a submodule called ``graph`` or
``backend``) gets ``_`` appended to that part (``to_``, ``graph_.conv``), so every op
can be installed at its name without hiding a method.
"""
from __future__ import annotations

from collections import Counter

from torch import fx


def _op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target)).strip("_") or "op"


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return path.split("@")[0]


def _unreserved(name: str, reserved: frozenset[str]) -> str:
    first, dot, rest = name.partition(".")
    while first in reserved:
        first += "_"
    return first + dot + rest


def assign_stable_names(gm: fx.GraphModule, reserved: frozenset[str] = frozenset()
                        ) -> fx.GraphModule:
    """Set ``node.meta["dc_name"]`` on every node (see module docstring); ``reserved``:
    the attribute names of the class the converted model will be."""
    reserved = frozenset(reserved) | frozenset(dir(fx.GraphModule))
    seen: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            base = str(node.target)
        elif node.op in ("call_function", "call_method"):
            scope = _scope(node)
            base = f"{scope}.{_op_name(node)}" if scope else _op_name(node)
        elif node.op == "get_attr":
            base = str(node.target)
        else:
            base = node.name
        base = _unreserved(base, reserved)
        count = seen[base]
        seen[base] += 1
        node.meta["dc_name"] = base if count == 0 else f"{base}_{count}"
    return gm


def stable_name(node: fx.Node) -> str:
    return node.meta.get("dc_name", node.name)


def inherit(new: fx.Node, old: fx.Node, suffix: str = "") -> fx.Node:
    """``new`` takes ``old``'s stable name (plus ``suffix``) and module scope."""
    new.meta["dc_name"] = stable_name(old) + suffix
    if "nn_module_stack" in old.meta:
        new.meta["nn_module_stack"] = old.meta["nn_module_stack"]
    return new


def unique_module_path(gm: fx.GraphModule, name: str) -> str:
    """A free attribute path on ``gm`` for a new module derived from ``name``."""
    base = "dc_" + name.replace(".", "_")
    path, i = base, 1
    while hasattr(gm, path):
        path, i = f"{base}_{i}", i + 1
    return path
