"""``propagate_value_info``: run the graph once on an example input and record, for every
node, what it produces and whether it varies with the input.

Guarantees after the pass: every node has ``node.meta["dc_value"]``, a
:class:`ValueInfo` with

* ``kind``: ``"tensor"``, ``"container"`` (a list/tuple/dict holding tensors) or
  ``"other"`` (sizes, ints, dtypes, …);
* ``shape``/``dtype``/``device`` for tensors;
* ``varying``: the value's data depends on a model input. Shape queries
  (``x.size()``, ``x.shape``) do not vary: they depend on the input's shape only;
* ``constant``: the example value for ``"other"`` nodes (e.g. a size used as an
  argument of a later ``view``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx


@dataclass
class ValueInfo:
    kind: str
    varying: bool
    shape: tuple[int, ...] | None = None
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    constant: Any = None

    @property
    def rank(self) -> int:
        return len(self.shape) if self.shape is not None else -1


def value_info(node: fx.Node) -> ValueInfo:
    try:
        return node.meta["dc_value"]
    except KeyError:
        raise RuntimeError(f"node {node.name} has no value info: run propagate_value_info first") \
            from None


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if type(value) in (list, tuple):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


class _Recorder(fx.Interpreter):
    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        inputs = node.all_input_nodes
        if isinstance(result, torch.Tensor):
            varying = node.op == "placeholder" or any(value_info(n).varying for n in inputs)
            info = ValueInfo("tensor", varying, tuple(result.shape), result.dtype, result.device)
        elif _holds_tensor(result):
            varying = node.op == "placeholder" or any(value_info(n).varying for n in inputs)
            info = ValueInfo("container", varying)
        else:
            info = ValueInfo("other", False, constant=result)
        node.meta["dc_value"] = info
        return result


def propagate_value_info(gm: fx.GraphModule, example_inputs: tuple) -> fx.GraphModule:
    """Annotate ``gm``'s nodes with :class:`ValueInfo` (see module docstring)."""
    with torch.no_grad():
        _Recorder(gm).run(*example_inputs)
    return gm


def call_entry(node: fx.Node, table: dict) -> Any:
    """``table``'s entry for the function or method name a ``call_function`` /
    ``call_method`` node calls; None for other nodes, missing and unhashable targets."""
    if node.op not in ("call_function", "call_method"):
        return None
    try:
        return table.get(node.target)
    except TypeError:  # an unhashable target
        return None
