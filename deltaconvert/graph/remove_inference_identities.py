"""``remove_inference_identities``: drop ops that are the identity at inference.

Guarantees: no ``nn.Dropout*``/``nn.Identity`` call, no dropout/stochastic-depth call
with ``training=False`` and no ``.clone()``/``.detach()`` remains;
their users read the op's input directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
                     nn.AlphaDropout, nn.FeatureAlphaDropout)
_IDENTITY_METHODS = {"clone", "detach"}
_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                      F.feature_alpha_dropout, torch.dropout}


def _stochastic_depth():
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return stochastic_depth


def _is_identity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, _IDENTITY_MODULES) or (
            type(module).__name__ == "StochasticDepth" and not module.training)
    if node.op == "call_method":
        return node.target in _IDENTITY_METHODS
    if node.op == "call_function":
        if node.target in _DROPOUT_FUNCTIONS:
            training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
            return training is False
        if node.target is _stochastic_depth():
            training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
            return training is False
    return False


def remove_inference_identities(gm: fx.GraphModule) -> fx.GraphModule:
    modules = dict(gm.named_modules(remove_duplicate=False))
    for node in list(gm.graph.nodes):
        if _is_identity(node, modules) and isinstance(node.args[0], fx.Node):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    return gm
