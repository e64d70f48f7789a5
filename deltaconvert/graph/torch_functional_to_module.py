"""``torch_functional_to_module``: functional activations, pools and norms become modules.

After this pass the registry sees one form of each op: ``F.relu(x)``, ``torch.relu(x)``
and ``x.relu()`` are all calls of a fresh ``nn.ReLU`` at that call site;
``F.layer_norm``, ``F.conv2d`` and ``F.linear`` whose weights are parameters become
``nn.LayerNorm``/``nn.Conv2d``/``nn.Linear`` holding copies of those parameters, and
``F.batch_norm`` with running statistics and ``training=False`` (inference, as in
timm's fused norm-act layers) becomes an eval-mode ``nn.BatchNorm1d/2d/3d`` with copies
of its statistics and affine parameters: ``y = γ·(x − μ)/√(σ²+ε) + β`` either way, so
the batch-norm can then be folded into a preceding conv or run as a channel scale. A
call whose non-input arguments are not all constants (or that passes an argument the
module cannot take) is left as it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from .analysis import call_entry, value_info
from .names import inherit, stable_name, unique_module_path

# (targets, module class, names of the arguments after the input, in positional order)
_TABLE: list[tuple[tuple, type[nn.Module], tuple[str, ...]]] = [
    ((F.relu, torch.relu, "relu"), nn.ReLU, ()),
    ((F.relu6,), nn.ReLU6, ()),
    ((F.leaky_relu,), nn.LeakyReLU, ("negative_slope",)),
    ((F.hardtanh,), nn.Hardtanh, ("min_val", "max_val")),
    ((F.elu,), nn.ELU, ("alpha",)),
    ((F.celu,), nn.CELU, ("alpha",)),
    ((F.selu, torch.selu), nn.SELU, ()),
    ((F.gelu,), nn.GELU, ("approximate",)),
    ((F.silu,), nn.SiLU, ()),
    ((F.mish,), nn.Mish, ()),
    ((F.hardswish,), nn.Hardswish, ()),
    ((F.hardsigmoid,), nn.Hardsigmoid, ()),
    ((torch.sigmoid, F.sigmoid, "sigmoid"), nn.Sigmoid, ()),
    ((torch.tanh, F.tanh, "tanh"), nn.Tanh, ()),
    ((F.softplus,), nn.Softplus, ("beta", "threshold")),
    ((F.softmax, torch.softmax, "softmax"), nn.Softmax, ("dim",)),
    ((F.log_softmax, torch.log_softmax, "log_softmax"), nn.LogSoftmax, ("dim",)),
    ((F.max_pool2d,), nn.MaxPool2d,
     ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")),
    ((F.avg_pool2d,), nn.AvgPool2d,
     ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")),
    ((F.adaptive_avg_pool2d,), nn.AdaptiveAvgPool2d, ("output_size",)),
    ((F.adaptive_max_pool2d,), nn.AdaptiveMaxPool2d, ("output_size", "return_indices")),
]
_MODULE_FOR = {target: (cls, names) for targets, cls, names in _TABLE for target in targets}


def _module_kwargs(node: fx.Node, names: tuple[str, ...]) -> dict | None:
    """Constructor kwargs from the call's constant arguments, or None if not possible."""
    extra = list(node.args[1:])
    if len(extra) > len(names) + 1:  # one trailing positional may be `inplace`
        return None
    kwargs = dict(zip(names, extra))
    for key, value in node.kwargs.items():
        # fx records some defaults explicitly (F.softmax: _stacklevel=3, dtype=None)
        if key == "inplace" or key.startswith("_") or (key not in names and value is None):
            continue
        if key not in names:
            return None
        kwargs[key] = value
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    if len(extra) == len(names) + 1 and isinstance(extra[-1], fx.Node):
        return None
    return {k: v for k, v in kwargs.items() if k in names}


def _bound(node: fx.Node, names: tuple[str, ...]) -> dict:
    bound = dict(zip(names, node.args[1:]))
    bound.update(node.kwargs)
    return bound


def _tensors(gm: fx.GraphModule, *operands) -> list[torch.Tensor | None] | None:
    """Parameter operands (``get_attr`` nodes or None) resolved to tensors, or None if an
    operand is computed at run time."""
    out = []
    for operand in operands:
        if operand is None:
            out.append(None)
        elif isinstance(operand, fx.Node) and operand.op == "get_attr":
            out.append(_resolve_attr(gm, operand.target))
        else:
            return None
    return out


def _load(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """``module`` in ``weight``'s dtype and device holding exact copies of the operands
    (cast first, then copied: a float64 model keeps every bit of its weights)."""
    module = module.to(weight.device, weight.dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
    return module


def _layer_norm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    bound = _bound(node, ("normalized_shape", "weight", "bias", "eps"))
    params = _tensors(gm, bound.get("weight"), bound.get("bias"))
    shape = bound.get("normalized_shape")
    if params is None or params[0] is None or isinstance(shape, fx.Node):
        return None
    ln = nn.LayerNorm(shape, eps=bound.get("eps", 1e-5), bias=params[1] is not None)
    return _load(ln, *params)


def _conv2d_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    bound = _bound(node, ("weight", "bias", "stride", "padding", "dilation", "groups"))
    params = _tensors(gm, bound.get("weight"), bound.get("bias"))
    geometry = [bound.get(k, d) for k, d in (("stride", 1), ("padding", 0), ("dilation", 1),
                                             ("groups", 1))]
    if params is None or params[0] is None or params[0].dim() != 4 or any(
            isinstance(g, fx.Node) for g in geometry):
        return None
    weight, bias = params
    stride, padding, dilation, groups = geometry
    conv = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                     stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=bias is not None)
    return _load(conv, weight, bias)


def _linear_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    bound = _bound(node, ("weight", "bias"))
    params = _tensors(gm, bound.get("weight"), bound.get("bias"))
    if params is None or params[0] is None:
        return None
    weight, bias = params
    return _load(nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None), weight, bias)


_BATCH_NORM_FOR_RANK = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def _batch_norm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    bound = _bound(node, ("running_mean", "running_var", "weight", "bias", "training",
                          "momentum", "eps"))
    params = _tensors(gm, bound.get("running_mean"), bound.get("running_var"),
                      bound.get("weight"), bound.get("bias"))
    eps = bound.get("eps", 1e-5)
    bn_class = _BATCH_NORM_FOR_RANK.get(value_info(node.args[0]).rank)
    if (params is None or params[0] is None or params[1] is None or bn_class is None
            or bound.get("training", False) is not False or isinstance(eps, fx.Node)):
        return None
    mean, var, weight, bias = params
    bn = bn_class(mean.numel(), eps=eps, affine=weight is not None or bias is not None)
    bn = bn.to(mean.device, mean.dtype).eval()
    with torch.no_grad():
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
        if bn.affine:
            bn.weight.copy_(weight if weight is not None else torch.ones_like(mean))
            bn.bias.copy_(bias if bias is not None else torch.zeros_like(mean))
    return bn


# Functionals whose tensor operands are parameters: built with the parameters copied in.
_WEIGHTED = {F.layer_norm: _layer_norm_module, F.conv2d: _conv2d_module,
             torch.conv2d: _conv2d_module, F.linear: _linear_module,
             F.batch_norm: _batch_norm_module}


def _resolve_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def torch_functional_to_module(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _WEIGHTED:
            module = _WEIGHTED[node.target](gm, node)
        else:
            entry = call_entry(node, _MODULE_FOR)
            kwargs = _module_kwargs(node, entry[1]) if entry else None
            module = entry[0](**kwargs) if kwargs is not None else None
        if module is None or not isinstance(node.args[0], fx.Node):
            continue
        path = unique_module_path(gm, stable_name(node))
        gm.add_submodule(path, module)
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(path, (node.args[0],))
        inherit(replacement, node)
        replacement.meta["dc_value"] = value_info(node)  # the same value, for later calls
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    return gm
