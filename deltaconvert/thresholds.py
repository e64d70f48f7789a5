"""Per-layer threshold configuration, and its YAML file format.

File format (``format_version: 1``; every key is optional except that unknown keys are
errors)::

    format_version: 1
    architecture: resnet18        # informational: layer names are what is checked
    default: 0.0                  # τ for every truncating layer not listed in `layers`
    input:                        # the Sparsify ops that read the model inputs
      threshold: 0.0              # τ_in: a pixel is sent when max_c |x − ref| > τ_in
      dilation: 0                 # grow the input update mask by this many pixels
    layers:                       # τ per converted node name (the keys of model.thresholds)
      layer1.0.relu: 0.02
    dense: [layer4.1.conv2]       # nodes forced to run dense (decided when converting)
    metadata: {}                  # free-form: tuning budget, clip, weights, …

Invariants: a loaded :class:`ThresholdConfig` holds only finite thresholds ≥ 0, an
integer dilation ≥ 0 and string layer names; ``ThresholdConfig.from_yaml(p).to_yaml(q)``
writes an equivalent file, and ``from_yaml(q)`` compares equal to ``from_yaml(p)``.
Errors name the file and line (``configs/x.yaml:7: …``) and, for unknown layers, the
closest valid names.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import ConfigError
from .files import write_text_atomic
from .validation import (
    check_dilation,
    closest_names,
    unknown_layer_message,
    validate_threshold,
)

if TYPE_CHECKING:
    from .model import DeltaGraphModule

FORMAT_VERSION = 1
TOP_LEVEL_KEYS = ("format_version", "architecture", "default", "input", "layers", "dense",
                  "metadata")
INPUT_KEYS = ("threshold", "dilation")
FILE_HEADER = ("# deltaconvert per-layer thresholds (format described in README.md, "
               "section 'Threshold files')\n")

KeyPath = tuple[Any, ...]


def location(source: str | None, lines: dict[KeyPath, int], path: KeyPath) -> str:
    """``file:line`` of the key at ``path`` (or of its closest parent with a known line),
    ``file`` if none is known, or ``"thresholds"`` for data that came from no file."""
    if source is None:
        return "thresholds"
    for cut in range(len(path), 0, -1):
        if path[:cut] in lines:
            return f"{source}:{lines[path[:cut]]}"
    return source


@dataclass
class ThresholdConfig:
    """Thresholds for one converted model; see the module docstring for the file format.

    ``source`` (the file it was read from) and ``lines`` (line of each key, by key path
    such as ``("layers", "layer1.0.relu")``) only serve error messages and do not take
    part in comparisons.
    """

    default: float = 0.0
    input_threshold: float = 0.0
    input_dilation: int = 0
    layers: dict[str, float] = field(default_factory=dict)
    dense: list[str] = field(default_factory=list)
    architecture: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)
    lines: dict[KeyPath, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.default = validate_threshold(self.default, "default")
        self.input_threshold = validate_threshold(self.input_threshold, "input.threshold")
        self.input_dilation = check_dilation(self.input_dilation)
        for name, value in self.layers.items():
            if not isinstance(name, str):
                raise ConfigError(f"layer names must be strings, got {name!r}")
            self.layers[name] = validate_threshold(value, name)
        if not all(isinstance(name, str) for name in self.dense):
            raise ConfigError(f"'dense' must list layer names (strings), got {self.dense!r}")
        if self.architecture is not None and not isinstance(self.architecture, str):
            raise ConfigError(f"'architecture' must be a string, got {self.architecture!r}")
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"'metadata' must be a mapping, got {self.metadata!r}")

    # -- locations for error messages ---------------------------------------------------
    def where(self, *path: Any) -> str:
        """Where the key at ``path`` was read from (see :func:`location`)."""
        return location(self.source, self.lines, path)

    # -- conversion to and from plain data -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The file contents as plain data (keys in the documented order)."""
        return {
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "default": self.default,
            "input": {"threshold": self.input_threshold, "dilation": self.input_dilation},
            "layers": dict(self.layers),
            "dense": list(self.dense),
            "metadata": dict(self.metadata),
        }

    def dumps(self) -> str:
        """The YAML text of this configuration."""
        try:
            body = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True,
                                 default_flow_style=False)
        except yaml.representer.RepresenterError as error:
            raise ConfigError(f"cannot write thresholds: metadata must hold plain YAML values "
                              f"(numbers, strings, lists, mappings): {error}") from None
        return FILE_HEADER + body

    def to_yaml(self, path: str | Path) -> None:
        """Write the configuration to ``path`` atomically."""
        write_text_atomic(path, self.dumps())

    @classmethod
    def from_yaml(cls, path: str | Path) -> "ThresholdConfig":
        """Read and validate a threshold file (errors carry ``file:line``)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"threshold file not found: {path}")
        data, lines = parse_yaml_with_lines(path.read_text(encoding="utf-8"), str(path))
        return config_from_data(data if data is not None else {}, str(path), lines)

    @classmethod
    def from_model(cls, model: "DeltaGraphModule", *,
                   metadata: dict[str, Any] | None = None) -> "ThresholdConfig":
        """The current thresholds of a converted model, every truncating layer listed.

        ``default`` is the most common layer threshold (the smallest on ties); forced
        dense layers and the architecture come from the model's conversion record.
        Edit ``model.thresholds[...]`` then ``from_model(model).to_yaml(path)`` to save.
        """
        inputs = model.input_sparsifiers()
        settings = {(op.threshold, op.dilation) for op in inputs.values()}
        if len(settings) > 1:
            raise ConfigError(f"the input Sparsify ops {sorted(inputs)} have different settings "
                              f"{sorted(settings)}; a threshold file holds one input setting: "
                              f"use model.set_input_sparsify(threshold=..., dilation=...)")
        input_threshold, input_dilation = settings.pop() if settings else (0.0, 0)
        layers = {name: value for name, value in model.thresholds.items() if name not in inputs}
        counts = Counter(layers.values())
        default = min(counts, key=lambda v: (-counts[v], v)) if counts else 0.0
        return cls(default=default, input_threshold=input_threshold,
                   input_dilation=input_dilation, layers=layers,
                   dense=list(model.conversion.get("forced_dense", [])),
                   architecture=model.conversion.get("architecture"),
                   metadata=dict(metadata or {}))

    # -- applying to a model ---------------------------------------------------------------
    def apply_to(self, model: "DeltaGraphModule") -> None:
        """Set every threshold of ``model`` from this configuration.

        Everything is validated before anything is set: an unknown layer name (with the
        closest valid names), a layer entry naming an input Sparsify, or a forced-dense
        layer the model was not converted with raises ConfigError and leaves the model
        unchanged.
        """
        thresholds = model.thresholds
        names = list(thresholds)
        inputs = model.input_sparsifiers()
        for name in self.layers:
            if name in inputs:
                raise ConfigError(f"{self.where('layers', name)}: {name!r} is the Sparsify of a "
                                  f"model input: set input.threshold instead")
            if name not in names:
                raise ConfigError(f"{self.where('layers', name)}: "
                                  + unknown_layer_message(name, names))
        forced = set(model.conversion.get("forced_dense", []))
        nodes = [*model.delta_ops(), *model.dense_islands]
        for index, name in enumerate(self.dense):
            if name in forced:
                continue
            if name not in nodes:
                raise ConfigError(f"{self.where('dense', index)}: cannot force {name!r} dense: "
                                  f"no node of this model has that name.{closest_names(name, nodes)}")
            raise ConfigError(f"{self.where('dense', index)}: {name!r} was not forced dense when "
                              f"this model was converted, and that is decided at conversion: "
                              f"convert the model again with this file "
                              f"(deltaconvert.convert(model, thresholds=...))")
        for name in names:
            if name not in inputs:
                thresholds[name] = self.layers.get(name, self.default)
        model.set_input_sparsify(self.input_threshold, self.input_dilation)


# -- YAML parsing with line numbers --------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as people write it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _walk_lines(node: yaml.Node, path: KeyPath, loader: _Loader, source: str,
                lines: dict[KeyPath, int]) -> None:
    """Record the line of every mapping key and sequence item; reject duplicate keys."""
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_path = (*path, key)
            line = key_node.start_mark.line + 1
            if key_path in lines:
                raise ConfigError(f"{source}:{line}: duplicate key {key!r} "
                                  f"(first given on line {lines[key_path]})")
            lines[key_path] = line
            _walk_lines(value_node, key_path, loader, source, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines[(*path, index)] = item.start_mark.line + 1
            _walk_lines(item, (*path, index), loader, source, lines)


def parse_yaml_with_lines(text: str, source: str) -> tuple[Any, dict[KeyPath, int]]:
    """The YAML document in ``text``, and the line of each key by key path."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        data = loader.construct_document(node)
        lines: dict[KeyPath, int] = {}
        _walk_lines(node, (), loader, source, lines)
        return data, lines
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{source}{at}: invalid YAML: {problem}") from None
    finally:
        loader.dispose()


class _Located:
    """Builds ConfigErrors that start with the location of the key being checked."""

    def __init__(self, source: str | None, lines: dict[KeyPath, int]) -> None:
        self.source, self.lines = source, lines

    def check(self, path: KeyPath, check: Any, *args: Any) -> Any:
        """``check(*args)``, with any ConfigError it raises located at ``path``."""
        try:
            return check(*args)
        except ConfigError as error:
            raise self.fail(path, str(error)) from None

    def fail(self, path: KeyPath, message: str) -> ConfigError:
        return ConfigError(f"{location(self.source, self.lines, path)}: {message}")


def _mapping(value: Any, path: KeyPath, located: _Located, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise located.fail(path, f"{what} must be a mapping, got {value!r}")
    return value


def _reject_unknown_keys(mapping: dict, valid: tuple[str, ...], path: KeyPath,
                         located: _Located, where: str) -> None:
    for key in mapping:
        if key not in valid:
            raise located.fail((*path, key), f"unknown key {key!r} in {where}."
                                             f"{closest_names(str(key), valid)} "
                                             f"Valid keys: {', '.join(valid)}")


def config_from_data(data: Any, source: str | None, lines: dict[KeyPath, int] | None = None
                     ) -> ThresholdConfig:
    """Validate plain data (a parsed file or a dict) into a :class:`ThresholdConfig`."""
    lines = lines or {}
    located = _Located(source, lines)
    if not isinstance(data, dict):
        raise ConfigError(f"{location(source, lines, ())}: expected a mapping with keys {', '.join(TOP_LEVEL_KEYS)} "
                          f"at the top level, got {type(data).__name__}")
    _reject_unknown_keys(data, TOP_LEVEL_KEYS, (), located, "the threshold file")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise located.fail(("format_version",), f"format_version {version!r} is not supported: "
                           f"this deltaconvert reads format_version {FORMAT_VERSION}")
    architecture = data.get("architecture")
    if architecture is not None and not isinstance(architecture, str):
        raise located.fail(("architecture",), f"architecture must be a string, got {architecture!r}")
    inputs = _mapping(data.get("input"), ("input",), located, "'input'")
    _reject_unknown_keys(inputs, INPUT_KEYS, ("input",), located, "'input'")
    layers = _mapping(data.get("layers"), ("layers",), located, "'layers' (layer name → threshold)")
    checked_layers = {}
    for name, value in layers.items():
        if not isinstance(name, str):
            raise located.fail(("layers", name), f"layer names must be strings, got {name!r}")
        checked_layers[name] = located.check(("layers", name), validate_threshold, value, name)
    dense = data.get("dense") or []
    if not isinstance(dense, list):
        raise located.fail(("dense",), f"'dense' must be a list of layer names, got {dense!r}")
    for index, name in enumerate(dense):
        if not isinstance(name, str):
            raise located.fail(("dense", index), f"'dense' entries must be layer names, got {name!r}")
        if name in dense[:index]:
            raise located.fail(("dense", index), f"{name!r} is listed twice in 'dense'")
    metadata = _mapping(data.get("metadata"), ("metadata",), located, "'metadata'")
    return ThresholdConfig(
        default=located.check(("default",), validate_threshold, data.get("default", 0.0), "default"),
        input_threshold=located.check(("input", "threshold"), validate_threshold,
                                      inputs.get("threshold", 0.0), "input.threshold"),
        input_dilation=located.check(("input", "dilation"), check_dilation,
                                     inputs.get("dilation", 0)),
        layers=checked_layers, dense=list(dense), architecture=architecture,
        metadata=dict(metadata), source=source, lines=lines)


def load_thresholds(spec: Any) -> ThresholdConfig:
    """A :class:`ThresholdConfig` from None (all 0), a number (the default for every
    layer), a dict in the file format, a YAML path, or a ThresholdConfig."""
    if spec is None:
        return ThresholdConfig()
    if isinstance(spec, ThresholdConfig):
        return spec
    if isinstance(spec, (str, Path)):
        return ThresholdConfig.from_yaml(spec)
    if isinstance(spec, dict):
        return config_from_data(spec, None)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ThresholdConfig(default=validate_threshold(spec, "default"))
    raise ConfigError(f"thresholds must be None, a number, a dict, a YAML path or a "
                      f"ThresholdConfig, got {spec!r}")
