"""TorchFunctionalToModule: functional activations, pools and norms become modules.

After this pass the registry sees one form of each op: ``F.relu(x)``, ``torch.relu(x)``
and ``x.relu()`` are all calls of a fresh ``nn.ReLU`` at that call site;
``F.layer_norm(x, s, w, b, eps)`` with parameter operands becomes an ``nn.LayerNorm``
holding those parameters. A call whose non-input arguments are not all constants
(or that passes an argument the module cannot take) is left as it is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

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


def _lookup(node: fx.Node):
    if node.op not in ("call_function", "call_method"):
        return None
    try:
        return _MODULE_FOR.get(node.target)
    except TypeError:
        return None


def _module_kwargs(node: fx.Node, names: tuple[str, ...]) -> dict | None:
    """Constructor kwargs from the call's constant arguments, or None if not possible."""
    extra = list(node.args[1:])
    if len(extra) > len(names) + 1:  # one trailing positional may be `inplace`
        return None
    kwargs = dict(zip(names, extra))
    for key, value in node.kwargs.items():
        if key == "inplace":
            continue
        if key not in names:
            return None
        kwargs[key] = value
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None
    if len(extra) == len(names) + 1 and isinstance(extra[-1], fx.Node):
        return None
    return {k: v for k, v in kwargs.items() if k in names}


def _layer_norm_module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    names = ("normalized_shape", "weight", "bias", "eps")
    bound = dict(zip(names, node.args[1:]))
    bound.update(node.kwargs)
    shape, weight, bias = bound.get("normalized_shape"), bound.get("weight"), bound.get("bias")
    if isinstance(shape, fx.Node):
        return None
    params = []
    for operand in (weight, bias):
        if operand is None:
            params.append(None)
        elif isinstance(operand, fx.Node) and operand.op == "get_attr":
            params.append(_resolve_attr(gm, operand.target))
        else:
            return None
    ln = nn.LayerNorm(shape, eps=bound.get("eps", 1e-5), elementwise_affine=weight is not None,
                      bias=bias is not None)
    with torch.no_grad():
        if params[0] is not None:
            ln.weight.copy_(params[0])
        if params[1] is not None:
            ln.bias.copy_(params[1])
    return ln.to(params[0].device if params[0] is not None else "cpu")


def _resolve_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def torch_functional_to_module(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is F.layer_norm:
            module = _layer_norm_module(gm, node)
        else:
            entry = _lookup(node)
            kwargs = _module_kwargs(node, entry[1]) if entry else None
            module = entry[0](**kwargs) if kwargs is not None else None
        if module is None or not isinstance(node.args[0], fx.Node):
            continue
        path = unique_module_path(gm, stable_name(node))
        gm.add_submodule(path, module)
        with gm.graph.inserting_before(node):
            replacement = gm.graph.call_module(path, (node.args[0],))
        inherit(replacement, node)
        node.replace_all_uses_with(replacement)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
