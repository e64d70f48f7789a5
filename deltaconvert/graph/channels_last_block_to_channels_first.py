"""``channels_last_block_to_channels_first``: remove ``permute(0,2,3,1) … permute(0,3,1,2)``
around per-pixel ops (ConvNeXt's ``LayerNorm → Linear → GELU → Linear``).

Inside such a block every op acts on the last dim, i.e. on the channels of one pixel.
The pass rewrites the block in channels-first form: ``nn.Linear`` → 1×1
``nn.Conv2d``, ``nn.LayerNorm(C)`` → :class:`~deltaconvert.layers.ChannelLayerNorm`,
element-wise modules unchanged, and drops both permutes.
Guarantee: the rewritten graph computes the same function; a block containing any
other op (or leaking a value out of the block) is left untouched.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from ..layers import ChannelLayerNorm
from .analysis import value_info
from .names import stable_name, unique_module_path

_TO_LAST = (0, 2, 3, 1)
_TO_FIRST = (0, 3, 1, 2)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Sigmoid, nn.SiLU,
                        nn.Hardswish, nn.Hardsigmoid, nn.GELU, nn.Tanh, nn.ELU, nn.Mish)


def _permute_dims(node: fx.Node) -> tuple[int, ...] | None:
    if node.op == "call_function" and node.target is torch.permute:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dims")
    elif node.op == "call_method" and node.target == "permute":
        dims = node.args[1] if len(node.args) == 2 else node.args[1:]
    else:
        return None
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return None
    return tuple(d % 4 for d in dims) if len(dims) == 4 else None


def _in_block_op(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A single-input module acting on the last dim only."""
    if node.op != "call_module" or len(node.all_input_nodes) != 1:
        return False
    module = modules[node.target]
    if isinstance(module, nn.LayerNorm):
        return len(module.normalized_shape) == 1
    return isinstance(module, (nn.Linear, *_ELEMENTWISE_MODULES))


def _block(start: fx.Node, modules: dict[str, nn.Module]) -> tuple[list[fx.Node], list[fx.Node]] | None:
    """(ops inside, closing permutes) of the block opened by ``start``, or None."""
    region: set[fx.Node] = {start}
    inside: list[fx.Node] = []
    ends: list[fx.Node] = []
    frontier = [start]
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in region or user in ends:
                continue
            if _permute_dims(user) == _TO_FIRST:
                ends.append(user)
            elif _in_block_op(user, modules):
                region.add(user)
                inside.append(user)
                frontier.append(user)
            else:
                return None
    return (inside, ends) if ends else None


def _channels_first(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.Linear):
        conv = nn.Conv2d(module.in_features, module.out_features, 1, bias=module.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(module.weight.detach().view(*module.weight.shape, 1, 1))
            if module.bias is not None:
                conv.bias.copy_(module.bias.detach())
        return conv.to(module.weight.device, module.weight.dtype)
    if isinstance(module, nn.LayerNorm):
        return ChannelLayerNorm(module)
    return module


def channels_last_block_to_channels_first(gm: fx.GraphModule) -> fx.GraphModule:
    modules = dict(gm.named_modules(remove_duplicate=False))
    for start in list(gm.graph.nodes):
        if _permute_dims(start) != _TO_LAST:
            continue
        if value_info(start.args[0]).rank != 4:
            continue
        block = _block(start, modules)
        if block is None:
            continue
        inside, ends = block
        for node in inside:
            replacement = _channels_first(modules[node.target])
            if replacement is not modules[node.target]:
                path = unique_module_path(gm, stable_name(node))
                gm.add_submodule(path, replacement)
                node.target = path
        start.replace_all_uses_with(start.args[0])
        gm.graph.erase_node(start)
        for end in ends:
            end.replace_all_uses_with(end.args[0])
            gm.graph.erase_node(end)
        modules = dict(gm.named_modules(remove_duplicate=False))
    return gm
