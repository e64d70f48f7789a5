"""The conversion pipeline: the ordered pass list and the runner that applies it.

    trace_model → assign_stable_names → NORMALIZE_PASSES → plan_delta_regions →
    insert_boundaries → swap_to_delta_ops

Each pass is a function ``GraphModule -> GraphModule`` in a file of its own name, and
works on the private traced copy (never on the caller's model). The runner, not the
passes, keeps the graph consistent: before each pass it propagates value info (so
``value_info(node)`` is current), after it it removes dead code, lints the graph and
recompiles the module (:func:`clean_up_graph`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import fx, nn

from ..ops.base import DeltaOp
from .analysis import propagate_value_info
from .channel_groups_to_channel_ops import channel_groups_to_channel_ops
from .channels_last_block_to_channels_first import channels_last_block_to_channels_first
from .fold_batch_norm_into_conv import fold_batch_norm_into_conv
from .fold_parameter_only_subgraphs import fold_parameter_only_subgraphs
from .inplace_to_out_of_place import inplace_to_out_of_place
from .insert_boundaries import insert_boundaries
from .names import assign_stable_names, stable_name
from .plan_delta_regions import plan_delta_regions
from .rearrangement_chain_to_canonical_op import rearrangement_chain_to_canonical_op
from .registry import describe_target
from .remove_inference_identities import remove_inference_identities
from .spatial_mean_to_global_pool import spatial_mean_to_global_pool
from .stack_reduction_to_sum import stack_reduction_to_sum
from .swap_to_delta_ops import swap_to_delta_ops
from .torch_functional_to_module import torch_functional_to_module
from .trace_model import trace_model

GraphPass = Callable[[fx.GraphModule], fx.GraphModule]

# In order. In-place ops become out of place first: dead-code elimination, which runs
# after every pass, would otherwise drop an in-place call whose result is unused.
NORMALIZE_PASSES: tuple[GraphPass, ...] = (
    inplace_to_out_of_place,
    remove_inference_identities,
    fold_parameter_only_subgraphs,
    torch_functional_to_module,
    stack_reduction_to_sum,
    channel_groups_to_channel_ops,
    spatial_mean_to_global_pool,
    channels_last_block_to_channels_first,
    rearrangement_chain_to_canonical_op,
    fold_batch_norm_into_conv,
)


def clean_up_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove dead code, check the graph's invariants and regenerate ``gm``'s code."""
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm


def run_passes(gm: fx.GraphModule, example: tuple, passes: tuple[GraphPass, ...]
               ) -> fx.GraphModule:
    """Apply ``passes`` in order; on return every node has current value info."""
    for graph_pass in passes:
        propagate_value_info(gm, example)
        gm = clean_up_graph(graph_pass(gm))
    propagate_value_info(gm, example)
    return gm


@dataclass
class DeltaGraph:
    """The pipeline's result: the module tree holding every op at its stable name, the
    rewritten graph, and the dense islands (stable name → what runs there and why)."""

    root: nn.Module
    graph: fx.Graph
    islands: dict[str, str]


def lower_to_delta_graph(model: nn.Module, example: tuple, forced_dense: set[str],
                         leaves: tuple[type, ...] = (), reserved: frozenset[str] = frozenset()
                         ) -> DeltaGraph:
    """Run the whole pipeline on a private copy of ``model`` (see the module docstring).

    ``forced_dense``: stable node names to run as dense islands whatever their op;
    ``leaves``: module classes traced as single ops (a front-end's dense heads);
    ``reserved``: attribute names of the converted model's class, which no op may take.
    """
    gm = trace_model(model, example, leaves)
    assign_stable_names(gm, reserved)
    gm = run_passes(gm, example, NORMALIZE_PASSES)
    plan = plan_delta_regions(gm, forced_dense)
    modules = dict(gm.named_modules(remove_duplicate=False))
    islands = {stable_name(node): f"{describe_target(node, modules)}: {reason}"
               for node, reason in plan.islands.items()}
    boundaries: dict[fx.Node, DeltaOp] = insert_boundaries(gm, plan)
    clean_up_graph(gm)
    root, graph = swap_to_delta_ops(gm, {**plan.delta_ops, **boundaries})
    return DeltaGraph(root, graph, islands)
