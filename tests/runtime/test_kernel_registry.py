"""The CUDA side's registry: which kernel family binds to which op (checked on the CPU:
wrappers are built without launching anything), and the constants shared with the
kernels."""
from __future__ import annotations

import subprocess
import sys
import types
import warnings
from collections import Counter

import pytest
import torch
from torch import nn

import deltaconvert
from deltaconvert.architectures import build_architecture
from deltaconvert.backends.cuda import constants, registry
from deltaconvert.backends.cuda.base import Accelerated
from deltaconvert.backends.cuda.binding import wrapper_for
from deltaconvert.backends.cuda.fusion import fusion_pairs
from deltaconvert.ops.base import DeltaOp

CPU_RUNTIME = types.SimpleNamespace(device=torch.device("cpu"))


def converted(model: nn.Module) -> deltaconvert.DeltaGraphModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return deltaconvert.convert(model, torch.randn(1, 3, 64, 64), backend="reference")


def bound(model: deltaconvert.DeltaGraphModule) -> dict[str, str | None]:
    return {name: type(w).__name__ if (w := wrapper_for(op, CPU_RUNTIME)) else None
            for name, op in model.delta_ops().items()}


def test_families_are_wrappers_of_delta_ops():
    families = registry.kernel_families()
    assert len(families) >= 10
    for family in families:
        assert issubclass(family.wrapper, Accelerated)
        assert family.ops and all(issubclass(op, DeltaOp) for op in family.ops)


def test_resnet18_binds_every_op_it_has_kernels_for():
    model = converted(build_architecture("resnet18"))
    wrappers = bound(model)
    kinds = Counter(wrappers.values())
    assert kinds == {"ConvKernel": 20, "Truncating": 17, "LinearPointwise": 8, "SparsifyKernel": 1,
                     "DensifyKernel": 1, "MaxPoolKernel": 1, "AvgPoolKernel": 1, None: 2}
    # the two ops without a kernel: the classifier (Linear on (N, C)) and the flatten
    assert {name for name, w in wrappers.items() if w is None} == {"fc", "flatten"}


def test_fusing_producers_are_the_families_that_declare_it():
    model = converted(build_architecture("mobilenet_v2"))

    def fuses(op: DeltaOp) -> bool:
        family = registry.family_for(op)
        return family is not None and family.fuses

    pairs = fusion_pairs(model, fuses)
    ops = model.delta_ops()
    assert len(pairs) == 35
    assert {type(wrapper_for(ops[p], CPU_RUNTIME)).__name__ for p in pairs} == {"ConvKernel"}
    assert {type(wrapper_for(ops[c], CPU_RUNTIME)).__name__ for c in pairs.values()} == {"Truncating"}


def test_an_activation_without_a_kernel_runs_the_reference_math():
    model = converted(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.Conv2d(4, 4, 1), nn.ReLU()))
    wrappers = bound(model)
    ops = model.delta_ops()
    by_fn = {type(getattr(ops[name], "fn", None)).__name__: w for name, w in wrappers.items()}
    assert by_fn["Softplus"] is None and by_fn["ReLU"] == "Truncating"


def test_two_families_claiming_one_op_is_an_error(monkeypatch):
    model = converted(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    op = next(op for op in model.delta_ops().values() if type(op).__name__ == "Nonlinear")
    monkeypatch.setattr(registry, "_FAMILIES", list(registry._FAMILIES))
    registry.accelerates(type(op))(type("Shadow", (Accelerated,), {}))
    with pytest.raises(RuntimeError, match="all claim this op"):
        registry.family_for(op)


def test_constants_print_without_torch():
    """Build scripts (CI's nvcc loop) read the -D flags with the standard library only."""
    result = subprocess.run([sys.executable, "-S", "-I", constants.__file__], capture_output=True,
                            text=True, check=True)
    flags = result.stdout.split()
    assert flags == constants.nvcc_flags()
    assert "-DACT_RELU=1" in flags and "-DDC_CONSTANTS=1" in flags and "-DTILE=8" in flags
