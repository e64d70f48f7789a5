"""The shape every op wrapper of the CUDA backend shares.

An :class:`Accelerated` is installed as ``op.accelerated``; the op calls it with its
runtime arguments. :meth:`Accelerated.run` returns the op's result, or
``NotImplemented`` when this call's configuration is not one the kernels handle (rank,
dtype, device, broadcasting), in which case the op's reference math runs instead —
unhandled configurations are routed, never run wrong.

Fusion: a linear producer (convolution, add/sub, channel scale) whose only consumer is
a truncating per-pixel op hands its work to that consumer instead of writing values: it
returns a Delta whose ``extras["fused"]`` is a :class:`Fused` addressed to the consumer,
with the correct output mask and placeholder values (never read).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ...delta import Delta
from ...ops.base import DeltaOp
from .arena import FrameArena
from .constants import TruncateInput
from .device import DeviceRuntime
from .kernels import SUPPORTED_DTYPES


@dataclass
class Fused:
    """Work a producer left to its consumer.

    ``lin``: the consumer adds ``round(scale[c] · Σ coefs[i] · operands[i])`` into its
    accumulator (with ``assign``, the sum *is* the accumulator: a dense layer's whole
    pre-activation, :mod:`.dense_layers`); otherwise the producer already accumulated
    into it and the operands only carry the candidate mask. ``counter``: the producer's
    update counter, to which the consumer's kernel adds the candidate pixels (the
    producer's output mask), or None (statistics off, or the producer counted them
    itself). ``owns_masks``: the
    operands' masks were written for the consumer alone (no other op reads them), so its
    kernel may overwrite them with its own output mask.
    """

    consumer: DeltaOp
    operands: list[Delta]
    coefs: list[float]
    lin: bool
    scale: torch.Tensor | None = None
    counter: torch.Tensor | None = None
    owns_masks: bool = False
    assign: bool = False
    shift: torch.Tensor | None = None  # with assign: fp32 per-channel biases added (may be None)
    keep: bool = True  # with assign: write the accumulator (else the plan restores it later)

    @property
    def input_mode(self) -> TruncateInput:
        """The truncation kernel's ``in_mode`` for this work."""
        if self.assign:
            return TruncateInput.ASSIGN
        return TruncateInput.ADD if self.lin else TruncateInput.ACCUMULATED


Consumer = tuple[DeltaOp, "Accelerated"]


class Accelerated:
    """``op.accelerated`` for one op of one sequence (see the module docstring).

    Built by :meth:`bind` for ``op``; ``consumer`` is the truncating op (and its wrapper)
    a fusing producer hands its work to, None otherwise. ``list_count``: the count slot
    of the pixel work list this op's kernel may fill (:mod:`.worklist`), None: no list.
    ``arena``: the bound model's per-frame zeroed memory (:mod:`.arena`), None outside a
    bound model (the wrapper then zeroes what it needs itself). ``delta_readers``: the
    wrappers of the 1×1 convs reading this op's output that may run dense deltas
    (:mod:`.dense_layers`; set at bind time for truncating and linear ops).
    ``total_state``: the key of the op's state entry that its output hands on as
    ``extras["total"]`` (its whole value, for a dense layer downstream), None if none.
    """

    list_count: torch.Tensor | None = None
    arena: FrameArena | None = None
    delta_readers: Sequence[Accelerated] = ()
    total_state: str | None = None

    def __init__(self, runtime: DeviceRuntime, op: DeltaOp,
                 consumer: Consumer | None = None) -> None:
        self.runtime = runtime
        self.consumer = consumer

    @property
    def writes_clean(self) -> bool:
        """Whether this op's output should be clean (zero outside its mask): one of its
        :attr:`delta_readers` runs a dense delta (decided per sequence)."""
        return any(reader.runs_dense_delta for reader in self.delta_readers)

    def __call__(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        out = self.run(op, *args, **kwargs)
        return self.fallback(op, *args, **kwargs) if out is NotImplemented else out

    def run(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fallback(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        return op.delta(*args, **kwargs)

    def dense_in_place(self, op: DeltaOp, *args: Any, **kwargs: Any) -> Any:
        """A dense frame of ``op`` by kernels (see :meth:`DeltaOp.forward`), or
        NotImplemented: the op's own :meth:`~DeltaOp.dense` (the default)."""
        return NotImplemented

    @staticmethod
    def fp32_state(*buffers: torch.Tensor) -> bool:
        """Whether state buffers are fp32, the only state dtype the kernels address (the
        reference backend keeps float64 state on the CPU)."""
        return all(b.dtype == torch.float32 for b in buffers)

    @classmethod
    def nonlinear_state(cls, acc: Sequence[torch.Tensor], sent: torch.Tensor,
                        dtype: torch.dtype) -> bool:
        """Whether a non-linear op's state is what the kernels address: fp32
        accumulators and sent outputs in the model dtype ``dtype`` (see
        ``ops.reference.sent_dtype``)."""
        return cls.fp32_state(*acc) and sent.dtype == dtype

    def usable(self, *values: Any) -> bool:
        """Whether the kernels take these tensors/Deltas: rank 2 or 4, fp32/fp16, this
        device, one dtype."""
        dtypes = set()
        for v in values:
            if v.dim() not in (2, 4) or v.device != self.runtime.device:
                return False
            dtypes.add(v.dtype)
        return len(dtypes) == 1 and dtypes.pop() in SUPPORTED_DTYPES
