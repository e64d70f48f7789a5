"""``trace_model``: a stock ``nn.Module`` → a private ``fx.GraphModule`` in eval mode.

Guarantees: the caller's model is never touched (it is deep-copied first); modules
registered with :func:`deltaconvert.register_leaf_module` stay single ops; a model
that cannot be traced raises :class:`~deltaconvert.errors.TraceFailure` naming the
module and source line where tracing stopped, with the fixes.
"""
from __future__ import annotations

import copy
import os
import traceback

import torch
from torch import fx, nn

from ..errors import TraceFailure
from .registry import is_registered_leaf

_LIBRARY_DIRS = (os.path.dirname(torch.__file__),
                 os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _SingleModule(nn.Module):
    """Root wrapper for a model that is itself one leaf module (``convert(nn.Conv2d(…))``):
    the op is then named ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


class DeltaTracer(fx.Tracer):
    """torch.fx tracer that also keeps registered leaf modules whole."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return is_registered_leaf(m) or super().is_leaf_module(m, module_qualified_name)


def trace_model(model: nn.Module) -> fx.GraphModule:
    """Deep-copy ``model``, put the copy in eval mode and trace it."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() expects a torch.nn.Module, got {type(model).__name__}")
    private = copy.deepcopy(model).eval()
    if isinstance(private, fx.GraphModule):
        return private
    tracer = DeltaTracer()
    if tracer.is_leaf_module(private, ""):
        private = _SingleModule(private)
    try:
        graph = tracer.trace(private)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        raise TraceFailure(_explain(model, tracer, error)) from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _explain(model: nn.Module, tracer: DeltaTracer, error: Exception) -> str:
    stack = list(getattr(tracer, "module_stack", {}).values())
    if stack:
        path, module_type = stack[-1]
        type_name = getattr(module_type, "__name__", str(module_type))
        where = f"in module '{path or '<root>'}' ({type_name})"
    else:
        type_name = type(model).__name__
        where = f"in {type_name}.forward"
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(_LIBRARY_DIRS)]
    if frames:
        f = frames[-1]
        where += f", at {f.filename}:{f.lineno}: `{(f.line or '').strip()}`"
    return (
        f"Cannot trace {type(model).__name__} with torch.fx {where}: "
        f"{type(error).__name__}: {error}\n"
        "Fixes: (1) keep that module as a single op that runs dense: "
        f"`deltaconvert.register_leaf_module({type_name})` before convert(); "
        "(2) make the control flow there independent of tensor values; "
        "(3) for a free function, mark it with `torch.fx.wrap`.")
