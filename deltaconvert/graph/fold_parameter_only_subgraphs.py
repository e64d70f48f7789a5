"""``fold_parameter_only_subgraphs``: computations on parameters alone become constants.

A node is *parameter-only* when it calls a function, method or module and every node it
reads is a ``get_attr`` (a parameter or buffer) or itself parameter-only: weight
standardisation (timm's ``ScaledStdConv2d``: ``F.batch_norm`` over the weight, times a
gain), scaled or reshaped weights, reparameterised branches summed at run time. Such a
value is the same on every call, so it is evaluated once here (in ``torch.no_grad``,
on the model's own dtype and device) and stored as a buffer of the traced module; each
use by a node that is not parameter-only reads that buffer with ``get_attr``. The op
consuming it (``F.conv2d(x, w)``) then sees a parameter operand and is normalised like
any other (``torch_functional_to_module``).

This is the rule of ``torch.fx.experimental.const_fold.split_const_subgraphs``, kept
inside the one traced module so that stable names survive. Nodes without inputs (tensor
factories, random numbers) and values derived from the input's shape are not folded:
the first may be random, the second differ between input sizes.
"""
from __future__ import annotations

import torch
from torch import fx

from .names import stable_name, unique_module_path

_CALLS = ("call_function", "call_method", "call_module")


def fold_parameter_only_subgraphs(gm: fx.GraphModule) -> fx.GraphModule:
    interpreter = fx.Interpreter(gm)
    env = interpreter.env  # parameter-only node → its value
    with torch.no_grad():
        for node in gm.graph.nodes:
            inputs = node.all_input_nodes
            if node.op == "get_attr" or (node.op in _CALLS and inputs
                                         and all(n in env for n in inputs)):
                env[node] = interpreter.run_node(node)
    for node, value in list(env.items()):
        if node.op == "get_attr" or not isinstance(value, torch.Tensor):
            continue
        if all(user in env for user in node.users):
            continue  # only read inside the folded subgraph
        path = unique_module_path(gm, stable_name(node))
        gm.register_buffer(path, value.detach().clone())
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(path)
        constant.meta["dc_name"] = path
        node.replace_all_uses_with(constant,
                                   delete_user_cb=lambda user: user not in env)
    return gm
