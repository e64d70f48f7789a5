"""The CUDA side's op registry: each kernel family declares, beside its wrapper class,
which delta ops and which configurations of them it accelerates.

    @accelerates(Nonlinear, when=lambda op: type(op.fn) is nn.MaxPool2d, fuses=False)
    class MaxPoolKernel(Accelerated): ...

``when`` is the capability validator: it sees the op at bind time (its module, function
and varying inputs) and accepts or declines. Run-time configurations a wrapper still
cannot take (a rank, a dtype, a broadcast) are declined per call by returning
``NotImplemented`` from :meth:`Accelerated.run`, and the reference math runs instead.
An op that no family accepts runs the reference math on the backend's stream.

``fuses``: the family is a linear producer that can hand its work to a truncating
consumer (see :mod:`.fusion`); its wrapper then receives that consumer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, TypeVar

from ...ops.base import DeltaOp
from .base import Accelerated

A = TypeVar("A", bound=type[Accelerated])


@dataclass(frozen=True)
class KernelFamily:
    """One registry entry: the wrapper class, the op classes it is for, its capability
    validator, and whether it fuses into a consumer."""

    wrapper: type[Accelerated]
    ops: tuple[type[DeltaOp], ...]
    when: Callable[[DeltaOp], bool]
    fuses: bool

    def accepts(self, op: DeltaOp) -> bool:
        return isinstance(op, self.ops) and self.when(op)


_FAMILIES: list[KernelFamily] = []


def accelerates(*ops: type[DeltaOp], when: Callable[[DeltaOp], bool] = lambda op: True,
                fuses: bool = False) -> Callable[[A], A]:
    """Class decorator: register the decorated wrapper for ``ops`` where ``when`` holds."""
    def register(wrapper: A) -> A:
        _FAMILIES.append(KernelFamily(wrapper, ops, when, fuses))
        return wrapper
    return register


def family_for(op: DeltaOp) -> KernelFamily | None:
    """The one family that accelerates ``op``, or None. Two families claiming the same
    op is a registry bug and raises."""
    found = [family for family in _FAMILIES if family.accepts(op)]
    if len(found) > 1:
        names = ", ".join(f.wrapper.__name__ for f in found)
        raise RuntimeError(f"{op.node_name}: kernel families {names} all claim this op; "
                           "narrow their `when` validators")
    return found[0] if found else None


def kernel_families() -> tuple[KernelFamily, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES)
