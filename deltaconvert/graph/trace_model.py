"""``trace_model``: a stock ``nn.Module`` → a private ``fx.GraphModule`` in eval mode.

Guarantees: the caller's model is never touched (it is deep-copied first); modules
registered with :func:`deltaconvert.register_leaf_module` stay single ops; a model
that cannot be traced raises :class:`~deltaconvert.errors.TraceFailure` naming the
module and source line where tracing stopped, with the fixes.

**Sizes resolved at conversion.** Some layers compute their geometry from the input's
size in Python (timm's ``Conv2dSame``/``MaxPool2dSame``/``pad_same``, the ``tf_*``
models: ``math.ceil(x.size(-1) / stride)``), which torch.fx cannot trace. When the
plain trace fails, the model is traced once more with the example input running beside
the tracer, and size queries (``x.size()``, ``x.shape``, ``x.dim()``) answer with the
example's sizes — except the batch dim, which stays symbolic. The graph is then exact
for inputs of the example's size (and any batch); its first node,
:func:`require_traced_size`, checks every call's input against that size and names the
layers that resolved it, telling the user to convert again for another size. (Chosen
over re-resolving on ``reset()``: a converted model is one fixed graph, and a size
change is a new conversion, as it is for a CUDA graph.)
"""
from __future__ import annotations

import copy
import operator
import os
import traceback
from typing import Any

import torch
from torch import fx, nn

from ..errors import SequenceMismatch, TraceFailure
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
    """torch.fx tracer that also keeps registered leaf modules, and instances of
    ``leaves``, whole."""

    def __init__(self, leaves: tuple[type, ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (is_registered_leaf(m) or isinstance(m, self.leaves)
                or super().is_leaf_module(m, module_qualified_name))


try:  # the tracer's patches of nn.Module.__call__/__getattr__, lifted for eager runs
    from torch.fx._symbolic_trace import _maybe_revert_all_patches as _unpatched
except ImportError:  # pragma: no cover - a torch without it cannot resolve sizes
    _unpatched = None


class _SizedProxy(fx.Proxy):
    """A proxy whose size queries return the example value's sizes (batch dim: a
    proxy), recording the module that asked."""

    def _sizes(self) -> tuple:
        tracer = self.tracer
        value = tracer.values.get(self.node)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"size of a non-tensor value ({type(value).__name__})")
        stack = list(tracer.module_stack.values())
        path, module_type = stack[-1] if stack else ("", type(tracer.root))
        tracer.resolved.setdefault(path or "<root>", getattr(module_type, "__name__", ""))
        batch = tracer.create_proxy("call_method", "size", (self, 0), {})
        return (batch, *value.shape[1:])

    def size(self, dim: int | None = None) -> Any:
        sizes = self._sizes()
        return sizes if dim is None else sizes[dim]

    @property
    def shape(self) -> tuple:
        return self._sizes()

    def dim(self) -> int:  # the rank does not depend on the input's size
        return self.tracer.values[self.node].dim()

    @property
    def ndim(self) -> int:
        return self.dim()


class _SizedTracer(DeltaTracer):
    """Traces with ``example`` running beside the graph (see the module docstring)."""

    def __init__(self, example: tuple, leaves: tuple[type, ...] = ()) -> None:
        super().__init__(leaves)
        self.example = list(example)
        self.values: dict[fx.Node, Any] = {}
        self.resolved: dict[str, str] = {}  # module path → class name

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _SizedProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, *rest, **options):  # noqa: ANN001
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **options)
        self.values[proxy.node] = self._evaluate(proxy.node)
        return proxy

    def _value(self, node: fx.Node) -> Any:
        if node not in self.values and node.op == "get_attr":
            self.values[node] = self._evaluate(node)
        return self.values[node]

    def _evaluate(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            return self.example.pop(0) if self.example else None
        if node.op == "get_attr":
            with _unpatched():
                return operator.attrgetter(node.target)(self.root)
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), self._value)
        with torch.no_grad(), _unpatched():
            if node.op == "call_module":
                return self.root.get_submodule(node.target)(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)


@fx.node.has_side_effect
def require_traced_size(x: torch.Tensor, size: tuple[int, ...], layers: str) -> None:
    """Raise :class:`SequenceMismatch` unless ``x`` (an input of a model traced with
    sizes resolved) has the sizes it was converted for, batch dim excepted."""
    if tuple(x.shape[1:]) != tuple(size):
        raise SequenceMismatch(
            f"this model was converted for inputs of size (N, {', '.join(map(str, size))}) "
            f"and got {tuple(x.shape)}: {layers} compute their padding or geometry from "
            "the input size, which was fixed at conversion. Convert the original model "
            "again with an example_input of the new size (one converted model per input "
            "size).")


def trace_model(model: nn.Module, example: tuple = (), leaves: tuple[type, ...] = ()
                ) -> fx.GraphModule:
    """Deep-copy ``model``, put the copy in eval mode and trace it, keeping instances of
    ``leaves`` whole; if that fails and ``example`` is given, trace with sizes resolved
    for it (module docstring)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert() expects a torch.nn.Module, got {type(model).__name__}")
    private = copy.deepcopy(model).eval()
    if isinstance(private, fx.GraphModule):
        return private
    tracer = DeltaTracer(leaves)
    if tracer.is_leaf_module(private, ""):
        private = _SingleModule(private)
    try:
        graph = tracer.trace(private)
    except Exception as error:  # noqa: BLE001 - re-raised with context
        if not example or _unpatched is None:
            raise TraceFailure(_explain(model, tracer, error)) from error
        graph = _trace_with_sizes(model, private, example, tracer, error)
    return fx.GraphModule(private, graph, type(model).__name__)


def _trace_with_sizes(model: nn.Module, private: nn.Module, example: tuple,
                      plain: DeltaTracer, plain_error: Exception) -> fx.Graph:
    sized = _SizedTracer(example, plain.leaves)
    try:
        graph = sized.trace(private)
    except Exception:  # noqa: BLE001 - the plain trace's error is the one to explain
        raise TraceFailure(_explain(model, plain, plain_error)) from plain_error
    if not sized.resolved:
        raise TraceFailure(_explain(model, plain, plain_error)) from plain_error
    layers = ", ".join(f"{path} ({cls})" for path, cls in list(sized.resolved.items())[:4])
    more = len(sized.resolved) - 4
    layers += f" and {more} more layer(s)" if more > 0 else ""
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    last = inputs[-1]
    for node, value in zip(inputs, example):
        if isinstance(value, torch.Tensor):
            with graph.inserting_after(last):
                last = graph.call_function(require_traced_size,
                                           (node, tuple(value.shape[1:]), layers))
    return graph


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
