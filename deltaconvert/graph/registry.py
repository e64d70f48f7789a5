"""The op-handler registry: which PyTorch op becomes which delta op.

A handler is a function ``(site: CallSite) -> DeltaOp`` registered for one or more
targets with :func:`register_delta_op`: module classes (matched along the MRO),
functions, or method names (strings, for ``x.method(...)`` calls). A handler raises
:class:`~deltaconvert.errors.UnsupportedOp` with a reason when a particular call cannot
be expressed in delta form (e.g. a softmax over a spatial dim); the node then runs as a
dense island. Adding an op is one handler here plus its tests.

The leaf-module registry (:func:`register_leaf_module`) lists module classes that the
tracer must not trace into; without a handler they run as dense islands.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import fx, nn

from ..ops.base import DeltaOp
from .analysis import ValueInfo, call_entry, value_info

Handler = Callable[["CallSite"], DeltaOp]
_HANDLERS: dict[Any, Handler] = {}
_LEAF_MODULES: set[type] = set()
T = TypeVar("T")


def register_delta_op(*targets: Any) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` converts calls of any of ``targets``."""
    def decorate(handler: Handler) -> Handler:
        for target in targets:
            _HANDLERS[target] = handler
        return handler
    return decorate


def register_leaf_module(cls: type[T]) -> type[T]:
    """Class decorator (or plain call): the tracer keeps instances of ``cls`` as one op."""
    _LEAF_MODULES.add(cls)
    return cls


def is_registered_leaf(module: nn.Module) -> bool:
    return any(isinstance(module, cls) for cls in _LEAF_MODULES)


@dataclass
class CallSite:
    """What a handler needs to know about one call node."""

    node: fx.Node
    name: str
    target: Any  # the module instance, the function, or the method name
    fn: Callable[..., Any]  # callable with the node's runtime signature
    varying: tuple[bool, ...]  # per tensor argument (see deltaconvert.ops.base.tensor_leaves)

    def arg(self, index: int, keyword: str, default: Any = None) -> Any:
        """The node's argument by position or keyword (a Node or a constant)."""
        if len(self.node.args) > index:
            return self.node.args[index]
        return self.node.kwargs.get(keyword, default)

    def constant(self, index: int, keyword: str, default: Any = None) -> Any:
        """Like :meth:`arg`, with Node arguments replaced by their example value when
        that value is a non-tensor constant (e.g. a size computed from a shape)."""
        value = self.arg(index, keyword, default)
        if isinstance(value, fx.Node):
            return value_info(value).constant
        return value

    @property
    def out(self) -> ValueInfo:
        return value_info(self.node)

    def input_info(self, index: int = 0) -> ValueInfo:
        arg = self.node.args[index]
        assert isinstance(arg, fx.Node)
        return value_info(arg)


def handler_for(node: fx.Node, modules: dict[str, nn.Module]) -> Handler | None:
    """The registered handler for ``node``'s target, or None."""
    if node.op == "call_module":
        for cls in type(modules[node.target]).__mro__:
            if cls in _HANDLERS:
                return _HANDLERS[cls]
        return None
    return call_entry(node, _HANDLERS)


def describe_target(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """Human-readable description of what a node calls (for warnings and errors)."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"F.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    if module == "_operator":
        return f"operator.{name}"
    return f"{module}.{name}" if module else name


def callable_for(node: fx.Node, modules: dict[str, nn.Module]) -> Callable[..., Any]:
    """A callable with the node's runtime signature."""
    if node.op == "call_module":
        return modules[node.target]
    if node.op == "call_method":
        return getattr(torch.Tensor, node.target)
    return node.target
