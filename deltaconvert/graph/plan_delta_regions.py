"""``plan_delta_regions``: decide, per node, whether it runs as a delta op or dense.

A node becomes a delta op when it varies with the input, its target has a registered
handler, and the handler accepts the call. Every other varying call runs dense (a
*dense island*) and is reported with the reason. ``getitem`` on a container (the tuple
of a ``chunk``) is structural: it passes on whatever the container holds.

Guarantees of the returned plan: a delta op never receives a container node as an
argument, a container produced by a delta op feeds only structural ``getitem``s
or other delta ops (Densify/Sparsify take single tensors), and every varying dense
tensor that enters the delta domain is a per-stream map (rank ≥ 2, the batch first):
an op reading a reduced value from a dense island (``y.max()``, ``y.std()``, a mean
over the batch) runs dense too, with the reason naming that value.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

from torch import fx, nn

from ..errors import UnsupportedOp
from ..ops.base import DeltaOp
from .analysis import value_info
from .names import stable_name
from .registry import CallSite, callable_for, describe_target, handler_for


@dataclass
class Plan:
    delta_ops: dict[fx.Node, DeltaOp] = field(default_factory=dict)
    islands: dict[fx.Node, str] = field(default_factory=dict)  # node → why it runs dense

    def is_delta(self, node: fx.Node) -> bool:
        """Whether ``node``'s runtime value is in the delta domain (a Delta or a
        container of Deltas)."""
        if node in self.delta_ops:
            return True
        return is_structural(node) and self.is_delta(node.args[0])


def is_structural(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target is operator.getitem
            and isinstance(node.args[0], fx.Node) and value_info(node.args[0]).kind == "container")


def _tensor_arg_flags(node: fx.Node) -> tuple[bool, ...]:
    flags: list[bool] = []

    def visit(arg):
        if isinstance(arg, fx.Node) and value_info(arg).kind == "tensor":
            flags.append(value_info(arg).varying)
        return arg
    fx.node.map_arg((node.args, node.kwargs), visit)
    return tuple(flags)


def _decide(node: fx.Node, modules: dict[str, nn.Module], forced_dense: set[str]
            ) -> DeltaOp | str:
    """The delta op for ``node``, or the reason it runs dense."""
    name = stable_name(node)
    if name in forced_dense:
        return "forced dense by the threshold configuration"
    if any(value_info(arg).kind == "container" for arg in node.all_input_nodes):
        return "takes a container of tensors as one argument"
    handler = handler_for(node, modules)
    if handler is None:
        return f"no delta form is registered for {describe_target(node, modules)}"
    target = modules[node.target] if node.op == "call_module" else node.target
    site = CallSite(node, name, target, callable_for(node, modules), _tensor_arg_flags(node))
    try:
        op = handler(site)
    except UnsupportedOp as reason:
        return str(reason)
    op.node_name = name
    return op


def plan_delta_regions(gm: fx.GraphModule, forced_dense: set[str] = frozenset()) -> Plan:
    modules = dict(gm.named_modules(remove_duplicate=False))
    plan = Plan()
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        if not value_info(node).varying or is_structural(node):
            continue
        decision = _decide(node, modules, set(forced_dense))
        if isinstance(decision, DeltaOp):
            plan.delta_ops[node] = decision
        else:
            plan.islands[node] = decision
    _demote_containers_with_dense_consumers(plan)
    _demote_ops_reading_non_maps(plan, _batch_size(gm))
    return plan


def _batch_size(gm: fx.GraphModule) -> int | None:
    for node in gm.graph.nodes:
        info = value_info(node)
        if node.op == "placeholder" and info.kind == "tensor" and info.rank >= 1:
            return info.shape[0]
    return None


def _is_map(node: fx.Node, batch: int | None) -> bool:
    info = value_info(node)
    return info.kind != "tensor" or (info.rank >= 2 and info.shape[0] == batch)


def _demote_ops_reading_non_maps(plan: Plan, batch: int | None) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(plan.delta_ops):
            for arg in node.all_input_nodes:
                if value_info(arg).varying and not plan.is_delta(arg) and not _is_map(arg, batch):
                    del plan.delta_ops[node]
                    plan.islands[node] = (
                        f"reads {stable_name(arg)}, a value of shape {value_info(arg).shape} "
                        "that is not a per-pixel map of each stream (a reduction over pixels "
                        "or the batch), which has no delta form")
                    changed = True
                    break


def _demote_containers_with_dense_consumers(plan: Plan) -> None:
    changed = True
    while changed:
        changed = False
        for node in list(plan.delta_ops):
            if value_info(node).kind != "container":
                continue
            dense_users = [u for u in node.users if not is_structural(u) and u not in plan.delta_ops]
            if dense_users:
                del plan.delta_ops[node]
                plan.islands[node] = (f"its outputs feed {stable_name(dense_users[0])} as one "
                                      "container, which runs dense")
                changed = True
