"""``insert_boundaries``: put a Sparsify where a varying dense value enters the delta domain
and a Densify where a delta value leaves it.

Guarantees: every varying tensor argument of a delta op is a Delta at run time (one
Sparsify per producer, shared by all its delta consumers); every argument of a dense
op and of the graph output is dense (one Densify per producer). Boundary nodes are
named after their producer: ``x_sparsify`` for an input ``x``, ``fc_densify``.
"""
from __future__ import annotations

from torch import fx

from ..ops.base import DeltaOp
from ..ops.boundary import Densify, Sparsify
from .analysis import value_info
from .names import inherit, unique_module_path
from .plan_delta_regions import Plan, is_structural


def _boundary(gm: fx.GraphModule, producer: fx.Node, op: DeltaOp, suffix: str) -> fx.Node:
    path = unique_module_path(gm, producer.meta.get("dc_name", producer.name) + suffix)
    gm.add_submodule(path, op)
    with gm.graph.inserting_after(producer):
        node = gm.graph.call_module(path, (producer,))
    inherit(node, producer, suffix)
    node.meta["dc_value"] = value_info(producer)
    op.node_name = node.meta["dc_name"]
    return node


def insert_boundaries(gm: fx.GraphModule, plan: Plan) -> dict[fx.Node, DeltaOp]:
    """Insert the boundary nodes; returns them with their ops (to be added to the plan's
    delta ops by the caller)."""
    sparsified: dict[fx.Node, fx.Node] = {}
    densified: dict[fx.Node, fx.Node] = {}
    boundaries: dict[fx.Node, DeltaOp] = {}
    for node in list(gm.graph.nodes):
        if node in boundaries or is_structural(node):
            continue
        if node in plan.delta_ops:
            for arg in node.all_input_nodes:
                if value_info(arg).varying and not plan.is_delta(arg):
                    if arg not in sparsified:
                        sparsified[arg] = _boundary(gm, arg, Sparsify(), "_sparsify")
                        boundaries[sparsified[arg]] = gm.get_submodule(sparsified[arg].target)
                    node.replace_input_with(arg, sparsified[arg])
        elif node.op in ("call_module", "call_function", "call_method", "output"):
            for arg in node.all_input_nodes:
                if plan.is_delta(arg):
                    if arg not in densified:
                        densified[arg] = _boundary(gm, arg, Densify(), "_densify")
                        boundaries[densified[arg]] = gm.get_submodule(densified[arg].target)
                    node.replace_input_with(arg, densified[arg])
    return boundaries
