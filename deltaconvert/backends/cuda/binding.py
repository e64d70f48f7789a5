"""Which kernels run which op: ``accelerate(model, runtime)`` installs ``op.accelerated``
on every op a kernel family of :mod:`.registry` accepts.

The families register themselves where their wrappers are defined; importing the
wrapper modules below fills the registry. Ops no family accepts (and configurations a
wrapper declines at run time) keep the reference math, run with torch ops on the
backend stream.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.fx import Node

from ...ops.base import DeltaOp
from ...ops.conv import Conv2d
from ..runtime import DeltaOpGraph
from . import boundary, cat, conv, conv_transpose, pointwise, pooling, resize  # noqa: F401  (register the families)
from .arena import FrameArena
from .base import Accelerated, Consumer
from .boundary import SparsifyKernel
from .constants import CONV_TARGETS
from .conv import ConvKernel, lists_own_rows, lists_rows, takes_pixel_list
from .device import DeviceRuntime
from .fusion import fusion_pairs, operand_sources
from .pointwise import ADD_FNS, SUB_FNS, LinearPointwise, Truncating
from .pooling import MaxPoolKernel
from .registry import family_for
from .worklist import first_arg_consumers, list_producers


def wrapper_for(op: DeltaOp, runtime: DeviceRuntime,
                consumer: Consumer | None = None) -> Accelerated | None:
    """The wrapper running ``op`` on the kernels (None: reference math). ``consumer``: the
    op and wrapper a fusing producer hands its work to (see :mod:`.fusion`)."""
    family = family_for(op)
    if family is None:
        return None
    return family.wrapper(runtime, op, consumer if family.fuses else None)


def accelerate(model: DeltaOpGraph, runtime: DeviceRuntime,
               arena: FrameArena | None = None) -> dict[str, Accelerated]:
    """The wrapper of every op the kernels run, by op name (installed on the ops). With
    ``arena``, every wrapper gets it (:attr:`Accelerated.arena`), and the wrapper of op
    number i lists its output pixels in the arena's slot i (:attr:`Accelerated.list_count`)
    when a list consumer reads that output, or when it is a conv whose GEMM runs over
    them (:func:`~.conv.lists_rows`); a truncating op gets the convs whose output lists it
    writes (:func:`output_list_targets`)."""
    ops = model.delta_ops()
    wrappers = {name: wrapper_for(op, runtime) for name, op in ops.items()}

    def fuses(op: DeltaOp) -> bool:
        family = family_for(op)
        return family is not None and family.fuses

    for producer, consumer in fusion_pairs(model, fuses).items():
        if isinstance(wrappers.get(consumer), Truncating):
            wrappers[producer] = wrapper_for(ops[producer], runtime,
                                             (ops[consumer], wrappers[consumer]))
    # Pixel lists feed 1×1 convs and truncating ops (their candidates, see listed_candidates).
    truncating = {id(ops[name]) for name, w in wrappers.items() if isinstance(w, Truncating)}
    listing = (list_producers(model, lambda op: takes_pixel_list(op) or id(op) in truncating)
               if arena is not None else set())
    for index, (name, op) in enumerate(ops.items()):
        if wrappers[name] is not None:
            wrappers[name].arena = arena
            if name in listing or (isinstance(wrappers[name], ConvKernel) and lists_rows(op)):
                wrappers[name].list_count = arena.slot(index)
        op.accelerated = wrappers[name]
    for name, targets in output_list_targets(model, wrappers).items():
        wrappers[name].conv_targets = targets
    for name, readers in dense_delta_readers(model, wrappers).items():
        wrappers[name].delta_readers = readers
    for name, convs in total_readers(model, wrappers).items():
        wrappers[name].total_readers = convs
    for name, convs in whole_readers(model, wrappers).items():
        wrappers[name].whole_readers = convs
    for name, source in total_sources(model, wrappers).items():
        wrappers[name].total_source = source
    return {name: w for name, w in wrappers.items() if w is not None}


def sole_argument_convs(node: Node, wrappers: dict[str, Accelerated | None]) -> list[ConvKernel]:
    """The wrappers of the convs among ``node``'s users that take its output as their
    one argument."""
    return [wrappers[user.target] for user in node.users
            if user.op == "call_module" and isinstance(wrappers.get(user.target), ConvKernel)
            and user.args == (node,) and not user.kwargs]


def whole_readers(model: DeltaOpGraph, wrappers: dict[str, Accelerated | None]
                  ) -> dict[str, list[ConvKernel]]:
    """For each unfused linear op (:class:`~.pointwise.LinearPointwise` without a
    consumer), the wrappers of the convs fused into a truncating activation that take
    its output as their one argument: each may run as a dense layer
    (:mod:`.dense_layers`) if its input carries its whole value, which the op then keeps
    (:attr:`~.pointwise.LinearPointwise.keeps_total`)."""
    readers = {}
    for node in model.graph.nodes:
        wrapper = wrappers.get(node.target) if node.op == "call_module" else None
        if isinstance(wrapper, LinearPointwise) and wrapper.consumer is None:
            convs = [conv for conv in sole_argument_convs(node, wrappers) if conv.consumer is not None]
            if convs:
                readers[node.target] = convs
    return readers


def total_sources(model: DeltaOpGraph, wrappers: dict[str, Accelerated | None]
                  ) -> dict[str, Callable[[], torch.Tensor | None]]:
    """For each conv fused into a truncating activation whose one argument is the output
    of an unfused op that keeps its whole value as state (:attr:`Accelerated.total_state`:
    a truncation's or max pool's sent values, a Sparsify's reference, a linear op's
    running total), a callable that reads that state entry when called (holding the op
    weakly: the conv's wrapper must not keep its producer's op alive)."""
    ops = model.delta_ops()
    sources = {}
    for node in model.graph.nodes:
        reader = wrappers.get(node.target) if node.op == "call_module" else None
        if (not isinstance(reader, ConvKernel) or reader.consumer is None or node.kwargs
                or len(node.args) != 1):
            continue
        arg = node.args[0]
        producer = (wrappers.get(arg.target) if isinstance(arg, Node) and arg.op == "call_module"
                    else None)
        if producer is not None and producer.total_state is not None and producer.consumer is None:
            sources[node.target] = state_entry(ops[arg.target], producer.total_state)
    return sources


def state_entry(op: DeltaOp, key: str) -> Callable[[], torch.Tensor | None]:
    """``op.state.get(key)`` when called; ``op`` held weakly."""
    ref = weakref.ref(op)
    return lambda: ref().state.get(key)


def total_readers(model: DeltaOpGraph, wrappers: dict[str, Accelerated | None]
                  ) -> dict[str, list[ConvKernel]]:
    """For each truncating op whose output is read by convs alone — each taking it as
    its one argument; no other op and no model output reads it — those convs' wrappers:
    while every one of them reads only the total (a dense layer,
    :attr:`~.conv.ConvKernel.reads_total_only`), the op stores no delta."""
    readers = {}
    for node in model.graph.nodes:
        if node.op == "call_module" and isinstance(wrappers.get(node.target), Truncating):
            convs = sole_argument_convs(node, wrappers)
            if convs and len(convs) == len(node.users):
                readers[node.target] = convs
    return readers


def dense_delta_readers(model: DeltaOpGraph, wrappers: dict[str, Accelerated | None]
                        ) -> dict[str, list[ConvKernel]]:
    """For each truncating or linear op, the wrappers of the convs whose first argument
    is its output and which may run dense deltas (:mod:`.dense_layers`: 1×1, stride 1,
    unpadded, :func:`~.conv.takes_pixel_list`), for which it writes clean outputs while
    one does."""
    ops = model.delta_ops()
    readers = {}
    for producer, users in first_arg_consumers(model).items():
        if not isinstance(wrappers.get(producer), (Truncating, LinearPointwise)):
            continue
        convs = [wrappers[user] for user in users
                 if isinstance(wrappers.get(user), ConvKernel) and takes_pixel_list(ops[user])]
        if convs:
            readers[producer] = convs
    return readers


def output_list_targets(model: DeltaOpGraph, wrappers: dict[str, Accelerated | None]
                        ) -> dict[str, list[tuple[DeltaOp, ConvKernel]]]:
    """For each truncating op, the convs (op, wrapper; at most CONV_TARGETS, in graph
    order) whose output masks and lists it writes (:mod:`.output_lists`): those whose
    first argument is its output, that run their GEMM over their own output pixels
    (:func:`~.conv.lists_own_rows`) and have a list slot."""
    ops = model.delta_ops()
    targets = {}
    for producer, users in first_arg_consumers(model).items():
        if not isinstance(wrappers.get(producer), Truncating):
            continue
        convs = [(ops[user], wrappers[user]) for user in users
                 if isinstance(wrappers.get(user), ConvKernel) and lists_own_rows(ops[user])
                 and wrappers[user].list_count is not None]
        if convs:
            targets[producer] = convs[:CONV_TARGETS]
    return targets


def dense_add_sources(model: DeltaOpGraph, wrappers: dict[str, Accelerated]
                      ) -> dict[str, list[ConvKernel]]:
    """The adds that may run as dense adds (:mod:`.dense_layers`), by op name, each with
    the conv wrappers among its operands' producers: an add or sub fused into a
    truncating op whose every operand is either a truncation's, a max pool's or a
    Sparsify's output (they hand on ``total``) or the only output use of a zero-padded
    conv whose own input is one of those."""
    def hands_total(name: str) -> bool:
        return isinstance(wrappers.get(name), (Truncating, MaxPoolKernel, SparsifyKernel))

    ops = model.delta_ops()
    adds = {}
    for name, wrapper in wrappers.items():
        if (not isinstance(wrapper, LinearPointwise) or wrapper.consumer is None
                or not isinstance(wrapper.consumer[1], Truncating)):
            continue
        fn = getattr(ops[name], "fn", None)  # a ChannelScale has none
        if not any(fn is f for f in (*ADD_FNS, *SUB_FNS)):
            continue
        sources = operand_sources(model, name)
        convs: list[ConvKernel] = []
        for source, source_op, users in sources or []:
            if hands_total(source):
                continue
            producer = wrappers.get(source)
            inputs = operand_sources(model, source)
            if (isinstance(producer, ConvKernel) and isinstance(source_op, Conv2d) and users == 1
                    and source_op.conv.padding_mode == "zeros" and inputs is not None
                    and len(inputs) == 1 and hands_total(inputs[0][0])):
                convs.append(producer)
                continue
            break
        else:
            if sources:
                adds[name] = convs
    return adds
