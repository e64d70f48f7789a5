"""torchvision models by name: building them without downloads, loading checkpoints into
them, and making random-init models input-dependent.

* :func:`build_architecture` calls a torchvision classification or segmentation builder
  with ``weights=None`` (and ``weights_backbone=None``): nothing is ever downloaded.
* :func:`read_checkpoint` accepts a state dict, a training checkpoint holding one
  (``{"state_dict": …}``, ``{"model": …}``, …) or a whole pickled model;
  :func:`load_state_dict_checked` lists missing, unexpected and mis-shaped keys.
* :func:`calibrate_batch_norm` recomputes BatchNorm statistics on sample frames: a
  random-init network with default statistics can produce outputs that do not depend on
  its input (e.g. DeepLabV3, GoogLeNet), which makes it useless for tests and tuning.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from .errors import CheckpointError, UnknownArchitecture
from .validation import closest_names

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
LISTED_KEYS = 8  # how many keys of each kind a mismatch message lists


def architecture_names() -> list[str]:
    """Every torchvision classification and segmentation builder name."""
    import torchvision
    from torchvision.models import list_models
    return sorted(set(list_models(module=torchvision.models))
                  | set(list_models(module=torchvision.models.segmentation)))


def is_segmentation(name: str) -> bool:
    import torchvision
    from torchvision.models import list_models
    return name in list_models(module=torchvision.models.segmentation)


def build_architecture(name: str, *, num_classes: int | None = None,
                       aux_loss: bool | None = None) -> nn.Module:
    """torchvision's ``name`` builder with random weights (never a download), eval mode."""
    import torchvision
    names = architecture_names()
    if name not in names:
        raise UnknownArchitecture(f"unknown architecture {name!r}.{closest_names(name, names)} "
                                  "Any torchvision "
                                  f"classification or segmentation builder works, e.g. resnet18, "
                                  f"mobilenet_v2, deeplabv3_mobilenet_v3_large")
    kwargs: dict[str, Any] = {"weights": None}
    if is_segmentation(name):
        kwargs["weights_backbone"] = None
        if aux_loss is not None:
            kwargs["aux_loss"] = aux_loss
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return torchvision.models.get_model(name, **kwargs).eval()


def _strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix):]: value for key, value in state.items()}
    return state


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor] | nn.Module:
    """The state dict, or the whole model, stored in a checkpoint file.

    State dicts saved from ``DataParallel`` (keys starting with ``module.``) are
    unwrapped. Loading a whole pickled model needs its class to be importable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not plain tensors: a whole pickled model (needs its classes), or not a checkpoint.
        try:
            content = torch.load(path, map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as error:
            raise CheckpointError(f"{path} holds a pickled model whose class cannot be imported "
                                  f"({error}); save its state_dict() instead") from None
        except Exception as error:  # torch.load raises many types for foreign files
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load: {type(error).__name__}: {error})") from None
    except Exception as error:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load: {type(error).__name__}: {error})") from None
    if isinstance(content, nn.Module):
        return content
    if _is_state_dict(content):
        return _strip_prefix(content, "module.")
    if isinstance(content, dict):
        for key in STATE_DICT_KEYS:
            inner = content.get(key)
            if isinstance(inner, nn.Module):
                return inner
            if _is_state_dict(inner):
                return _strip_prefix(inner, "module.")
        keys = ", ".join(repr(k) for k in list(content)[:LISTED_KEYS])
        raise CheckpointError(f"{path} holds a dict without a state dict: its keys are {keys}; "
                              f"expected parameter names, or one of {', '.join(STATE_DICT_KEYS)}")
    raise CheckpointError(f"{path} holds a {type(content).__name__}, not a state dict or model")


def _listing(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown + (f" … ({len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else "")


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                            architecture: str) -> None:
    """Load ``state`` into ``model``, or raise CheckpointError listing every mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or reshaped):
        model.load_state_dict(state)
        return
    lines = [f"{source} does not fit {architecture}:"]
    if missing:
        lines.append(f"  missing from the checkpoint ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  not in {architecture} ({len(unexpected)}): {_listing(unexpected)}")
    if reshaped:
        lines.append(f"  different shapes, checkpoint vs model ({len(reshaped)}): "
                     f"{_listing(reshaped)}")
    lines.append("Check the architecture name; for a different number of classes pass "
                 "--num-classes (num_classes= in Python).")
    raise CheckpointError("\n".join(lines))


def model_from_checkpoint(architecture: str, checkpoint: str | Path, *,
                          num_classes: int | None = None) -> nn.Module:
    """``architecture`` with the weights of ``checkpoint`` (or the whole model it holds),
    in eval mode. Segmentation checkpoints with ``aux_classifier`` weights get the
    auxiliary head."""
    content = read_checkpoint(checkpoint)
    if isinstance(content, nn.Module):
        return content.eval()
    aux = any(key.startswith("aux_classifier.") for key in content)
    model = build_architecture(architecture, num_classes=num_classes,
                               aux_loss=aux if is_segmentation(architecture) else None)
    load_state_dict_checked(model, content, str(checkpoint), architecture)
    return model


@torch.no_grad()
def calibrate_batch_norm(model: nn.Module, frames: Iterable[torch.Tensor]) -> nn.Module:
    """Replace every BatchNorm's running statistics by the mean and variance over
    ``frames``, computed in one forward of the frames as one batch (so BatchNorms after a
    global pooling see more than one value per channel); returns ``model`` in eval mode.

    Only BatchNorm layers run in training mode meanwhile (dropout stays off), so the
    result is deterministic. Modifies ``model`` in place.
    """
    model.eval()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average: after one forward, that batch's statistics
        norm.train()
    try:
        model(torch.cat(list(frames)))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return model
