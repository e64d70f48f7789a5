"""Saving and loading converted models: ``deltaconvert.save(model, path)`` and
``deltaconvert.load(path)``.

A model file is a ZIP archive (the recommended suffix is ``.delta.pt``) holding:

* ``deltaconvert.json``: the header, plain JSON readable without unpickling anything:
  the file format and its version, the deltaconvert and torch versions that wrote it,
  the conversion record (architecture, dense islands, …) and the thresholds in the
  threshold-file format (for reading; the ops themselves carry their thresholds);
* ``forward.py``: the converted model's generated code, for reading only;
* ``modules.pt``: ``torch.save`` of the module tree (delta ops with their parameters and
  thresholds, dense-island modules) and of the graph, node by node, with functions
  recorded by import path.

The original Python model class is not needed to load the file: the graph and its ops
are rebuilt from these records. Classes of dense-island modules (e.g. a custom layer the
converter could not express in delta form) are pickled by reference and must be
importable. Sequence state is never saved: a loaded model starts a new sequence.
``modules.pt`` is a pickle; load only files you trust, as with ``torch.load``.

Writes are atomic (see :mod:`deltaconvert.files`).
"""
from __future__ import annotations

import importlib
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import fx, nn

from .errors import InvalidArgument, ModelFileError
from .files import atomic_writer
from .model import DeltaGraphModule
from .thresholds import ThresholdConfig
from .validation import check_output_file, describe
from .version import __version__

FILE_FORMAT = "deltaconvert-model"
FORMAT_VERSION = 1
HEADER_NAME = "deltaconvert.json"
CODE_NAME = "forward.py"
MODULES_NAME = "modules.pt"


@dataclass(frozen=True)
class NodeRef:
    """A reference to an earlier node, by name, inside a saved node's arguments."""

    name: str


@dataclass(frozen=True)
class FunctionRef:
    """A function target, by import path: ``getattr(import_module(module), name)``."""

    module: str
    name: str

    def resolve(self) -> Callable[..., Any]:
        owner: Any = importlib.import_module(self.module)
        for part in self.name.split("."):
            owner = getattr(owner, part)
        return owner


def function_ref(function: Callable[..., Any], node_name: str) -> FunctionRef:
    """The import path of ``function``; raises if it cannot be imported back."""
    module = getattr(function, "__module__", None)
    for name in (getattr(function, "__name__", None), getattr(function, "__qualname__", None)):
        if module and name:
            ref = FunctionRef(module, name)
            try:
                if ref.resolve() is function:
                    return ref
            except (ImportError, AttributeError):
                pass
    raise ModelFileError(f"cannot save node {node_name!r}: its function {function!r} cannot be "
                         f"imported by name (module {module!r}); only importable functions "
                         f"can be saved")


def _encode_arg(value: Any) -> Any:
    """Node arguments as plain data: Nodes become NodeRefs, fx's immutable containers
    become lists and dicts."""
    if isinstance(value, fx.Node):
        return NodeRef(value.name)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_encode_arg(v) for v in value)
    if isinstance(value, list):
        return [_encode_arg(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode_arg(v) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_encode_arg(value.start), _encode_arg(value.stop), _encode_arg(value.step))
    return value


def _decode_arg(value: Any, nodes: dict[str, fx.Node]) -> Any:
    if isinstance(value, NodeRef):
        return nodes[value.name]
    if isinstance(value, tuple):
        return tuple(_decode_arg(v, nodes) for v in value)
    if isinstance(value, list):
        return [_decode_arg(v, nodes) for v in value]
    if isinstance(value, dict):
        return {k: _decode_arg(v, nodes) for k, v in value.items()}
    if isinstance(value, slice):
        return slice(_decode_arg(value.start, nodes), _decode_arg(value.stop, nodes),
                     _decode_arg(value.step, nodes))
    return value


def encode_graph(graph: fx.Graph) -> list[dict[str, Any]]:
    """Every node as ``{op, name, target, args, kwargs}`` in graph order."""
    records = []
    for node in graph.nodes:
        target = function_ref(node.target, node.name) if node.op == "call_function" else node.target
        records.append({"op": node.op, "name": node.name, "target": target,
                        "args": _encode_arg(node.args), "kwargs": _encode_arg(node.kwargs)})
    return records


def decode_graph(records: list[dict[str, Any]]) -> fx.Graph:
    """The graph :func:`encode_graph` recorded, with the same node names."""
    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for record in records:
        target = record["target"]
        node = graph.create_node(record["op"],
                                 target.resolve() if isinstance(target, FunctionRef) else target,
                                 _decode_arg(record["args"], nodes),
                                 _decode_arg(record["kwargs"], nodes), name=record["name"])
        if node.name != record["name"]:
            raise ModelFileError(f"corrupt model file: node name {record['name']!r} is not unique")
        nodes[node.name] = node
    graph.lint()
    return graph


def _module_tree(model: DeltaGraphModule) -> nn.Module:
    """A plain module holding the model's submodules, parameters and buffers (shared, not
    copied). Pickling it leaves out every op's sequence state and backend handles
    (``DeltaOp.__getstate__``)."""
    tree = nn.Module()
    for name, child in model.named_children():
        tree.add_module(name, child)
    for name, parameter in model.named_parameters(recurse=False):
        tree.register_parameter(name, parameter)
    for name, buffer in model.named_buffers(recurse=False):
        tree.register_buffer(name, buffer)
    return tree


def save(model: DeltaGraphModule, path: str | os.PathLike) -> None:
    """Write a converted model to ``path`` (atomically; see the module docstring).

    The model is not modified and its current sequence is not saved.
    """
    if not isinstance(model, DeltaGraphModule):
        raise InvalidArgument(f"deltaconvert.save expects a converted model (from "
                              f"deltaconvert.convert or deltaconvert.load), got "
                              f"{describe(model)}; convert it first: "
                              "deltaconvert.save(deltaconvert.convert(model), path)")
    check_output_file(path, "deltaconvert.save(path=...)")
    header = {
        "format": FILE_FORMAT,
        "format_version": FORMAT_VERSION,
        "deltaconvert_version": __version__,
        "torch_version": torch.__version__,
        "class_name": type(model).__name__,
        "backend": model.backend,
        "conversion": model.conversion,
        "thresholds": ThresholdConfig.from_model(model).to_dict(),
    }
    payload = io.BytesIO()
    torch.save({"modules": _module_tree(model), "graph": encode_graph(model.graph)}, payload)
    with atomic_writer(path, "wb") as handle, zipfile.ZipFile(handle, "w") as archive:
        archive.writestr(HEADER_NAME, json.dumps(header, indent=2), zipfile.ZIP_DEFLATED)
        archive.writestr(CODE_NAME, model.code, zipfile.ZIP_DEFLATED)
        archive.writestr(MODULES_NAME, payload.getvalue(), zipfile.ZIP_STORED)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a model file, after checking format and version."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    not_ours = (f"{path} is not a deltaconvert model file (expected a ZIP archive with "
                f"{HEADER_NAME}, as written by deltaconvert.save or `deltaconvert convert`)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if HEADER_NAME not in names:
                torch_checkpoint = any(n.endswith("data.pkl") for n in names)
                hint = (": it looks like a torch.save checkpoint; convert it with "
                        "`deltaconvert convert ARCH --checkpoint FILE -o model.delta.pt`"
                        if torch_checkpoint else "")
                raise ModelFileError(not_ours + hint)
            header = json.loads(archive.read(HEADER_NAME))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(not_ours) from None
    if not isinstance(header, dict) or header.get("format") != FILE_FORMAT:
        raise ModelFileError(not_ours)
    if header.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{path} has model-file format version {header.get('format_version')!r} (written by "
            f"deltaconvert {header.get('deltaconvert_version')}); this deltaconvert "
            f"{__version__} reads version {FORMAT_VERSION}: convert the model again with this "
            f"version, or install the deltaconvert version that wrote it")
    return header


def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> DeltaGraphModule:
    """Restore a model written by :func:`save`, on ``device``, starting a new sequence."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgument(f"deltaconvert.load(path=...): expected the path of a model file "
                              f"(from deltaconvert.save), got {describe(path)}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgument(f"deltaconvert.load(device=...): expected a torch device such as "
                              f"'cpu' or 'cuda:0', got {describe(device)}") from None
    header = read_header(path)
    with zipfile.ZipFile(path) as archive:
        blob = archive.read(MODULES_NAME)
    try:
        payload = torch.load(io.BytesIO(blob), map_location=device, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as error:
        raise ModelFileError(f"{path}: a module class this model uses cannot be imported "
                             f"({error}); import the package that defines it before loading"
                             ) from None
    graph = decode_graph(payload["graph"])
    return DeltaGraphModule(payload["modules"], graph, header["class_name"],
                            backend=header["backend"], conversion=header["conversion"])
