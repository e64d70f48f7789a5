"""Per-layer threshold configuration (YAML).

File format (``format_version: 1``)::

    format_version: 1
    architecture: resnet18        # informational; checked against the model if set
    default: 0.0                  # τ for every truncating layer not listed below
    input:                        # the model-input Sparsify
      threshold: 0.0
      dilation: 0
    layers:                       # τ per converted node name (model.thresholds keys)
      layer1.0.relu: 0.02
    dense: [layer4.1.conv2]       # layers forced to run dense
    metadata: {}                  # free-form (tuning budget, clip, …)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .model import DeltaGraphModule

FORMAT_VERSION = 1


@dataclass
class ThresholdConfig:
    default: float = 0.0
    input_threshold: float = 0.0
    input_dilation: int = 0
    layers: dict[str, float] = field(default_factory=dict)
    dense: list[str] = field(default_factory=list)
    architecture: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # where it was loaded from (for error messages)

    def apply_to(self, model: "DeltaGraphModule") -> None:
        """Set every threshold of ``model`` from this configuration."""
        from .model import unknown_layer_message
        where = f" (in {self.source})" if self.source else ""
        thresholds = model.thresholds
        inputs = model.input_sparsifiers()
        for name in thresholds:
            if name not in inputs:
                thresholds[name] = self.default
        for name, value in self.layers.items():
            if name not in thresholds:
                raise ConfigError(unknown_layer_message(name, list(thresholds)) + where)
            thresholds[name] = value
        model.set_input_sparsify(self.input_threshold, self.input_dilation)
        islands = model.dense_islands
        for name in self.dense:
            if name not in islands:
                raise ConfigError(unknown_layer_message(name, list(model.delta_ops())) + where)


def load_thresholds(spec: Any) -> ThresholdConfig:
    """A :class:`ThresholdConfig` from None, a number, a dict, a YAML path or a config."""
    if spec is None:
        return ThresholdConfig()
    if isinstance(spec, ThresholdConfig):
        return spec
    if isinstance(spec, bool):
        raise ConfigError(f"thresholds must be a number, dict or YAML path, got {spec!r}")
    if isinstance(spec, (int, float)):
        from .model import validate_threshold
        return ThresholdConfig(default=validate_threshold(spec, "default"))
    if isinstance(spec, dict):
        return config_from_dict(spec, source=None)
    if isinstance(spec, (str, Path)):
        return read_yaml(Path(spec))
    raise ConfigError(f"thresholds must be a number, dict, YAML path or ThresholdConfig, "
                      f"got {type(spec).__name__}")


def read_yaml(path: Path) -> ThresholdConfig:
    import yaml
    if not path.is_file():
        raise ConfigError(f"threshold file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {getattr(error, 'problem', error)}") from None
    return config_from_dict(data if data is not None else {}, source=str(path))


def config_from_dict(data: Any, source: str | None) -> ThresholdConfig:
    from .model import validate_threshold
    where = source or "thresholds"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    known = {"format_version", "architecture", "default", "input", "layers", "dense", "metadata"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        raise ConfigError(f"{where}: format_version {version!r} is not supported "
                          f"(this deltaconvert reads {FORMAT_VERSION})")
    inputs = data.get("input") or {}
    if not isinstance(inputs, dict) or set(inputs) - {"threshold", "dilation"}:
        raise ConfigError(f"{where}: 'input' must be a mapping with keys threshold, dilation")
    dilation = inputs.get("dilation", 0)
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise ConfigError(f"{where}: input.dilation must be an integer ≥ 0, got {dilation!r}")
    layers = data.get("layers") or {}
    if not isinstance(layers, dict):
        raise ConfigError(f"{where}: 'layers' must map layer names to thresholds")
    dense = data.get("dense") or []
    if not isinstance(dense, list) or not all(isinstance(n, str) for n in dense):
        raise ConfigError(f"{where}: 'dense' must be a list of layer names")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ConfigError(f"{where}: 'metadata' must be a mapping")
    return ThresholdConfig(
        default=validate_threshold(data.get("default", 0.0), "default"),
        input_threshold=validate_threshold(inputs.get("threshold", 0.0), "input.threshold"),
        input_dilation=dilation,
        layers={str(k): validate_threshold(v, str(k)) for k, v in layers.items()},
        dense=list(dense),
        architecture=data.get("architecture"),
        metadata=dict(metadata),
        source=source,
    )
