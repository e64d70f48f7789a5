"""``fold_batch_norm_into_conv``: ``conv → batch-norm`` (inference) becomes one conv.

``BN(W x + b) = s·(W x + b − μ) + β`` with ``s = γ/√(σ²+ε)``: the folded conv has
weights ``s·W`` and bias ``s·(b − μ) + β``. Applies to ``Conv2d → BatchNorm2d``,
``ConvTranspose2d → BatchNorm2d`` and ``Linear → BatchNorm1d`` where the conv's output
feeds only the batch-norm and the batch-norm uses running statistics. The folded module
is new (computed in float64, then rounded once to the model's dtype); the traced
modules are left as they were. Batch-norms that cannot be folded
stay and become per-channel scales in the delta domain.
"""
from __future__ import annotations

import copy

from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .names import stable_name, unique_module_path

_PAIRS = ((nn.Conv2d, nn.BatchNorm2d), (nn.ConvTranspose2d, nn.BatchNorm2d),
          (nn.Linear, nn.BatchNorm1d))


def _fused(producer: nn.Module, bn: nn.Module) -> nn.Module | None:
    if bn.running_mean is None or bn.running_var is None:
        return None
    for producer_cls, bn_cls in _PAIRS:
        if type(producer) is producer_cls and type(bn) is bn_cls:
            dtype = producer.weight.dtype
            producer = copy.deepcopy(producer).eval().double()
            bn = copy.deepcopy(bn).eval().double()
            if isinstance(producer, nn.Linear):
                return fuse_linear_bn_eval(producer, bn).to(dtype)
            transpose = isinstance(producer, nn.ConvTranspose2d)
            return fuse_conv_bn_eval(producer, bn, transpose=transpose).to(dtype)
    return None


def fold_batch_norm_into_conv(gm: fx.GraphModule) -> fx.GraphModule:
    modules = dict(gm.named_modules(remove_duplicate=False))
    for bn_node in list(gm.graph.nodes):
        if bn_node.op != "call_module" or not isinstance(modules[bn_node.target],
                                                          nn.modules.batchnorm._BatchNorm):
            continue
        producer_node = bn_node.args[0]
        if (not isinstance(producer_node, fx.Node) or producer_node.op != "call_module"
                or len(producer_node.users) != 1):
            continue
        fused = _fused(modules[producer_node.target], modules[bn_node.target])
        if fused is None:
            continue
        path = unique_module_path(gm, stable_name(producer_node))
        gm.add_submodule(path, fused)
        producer_node.target = path
        bn_node.replace_all_uses_with(producer_node)
        gm.graph.erase_node(bn_node)
    return gm
