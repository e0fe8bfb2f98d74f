"""Build models from config values and move weights between NVFlare (numpy) and torch."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from nvflare.fuel.utils.class_utils import instantiate_class


def resolve_model(model: Any) -> torch.nn.Module:
    """Return a torch module from a module, or from ``{"path": "pkg.Class_or_function", "args": {...}}``.

    Raises:
        ValueError: the value is neither, or the path does not give a torch module.
    """
    if isinstance(model, torch.nn.Module):
        return model
    if isinstance(model, dict) and isinstance(model.get("path"), str):
        try:
            built = instantiate_class(model["path"], model.get("args") or {})
        except (TypeError, ValueError, ImportError) as exc:
            raise ValueError(f"cannot build model {model['path']!r}: {exc}") from exc
        if not isinstance(built, torch.nn.Module):
            raise ValueError(f"model {model['path']!r} gave a {type(built).__name__}: expected a torch.nn.Module")
        return built
    raise ValueError(f"model must be a torch.nn.Module or {{'path': ..., 'args': ...}}, got {type(model).__name__}")


def check_model_spec(model: Any) -> Any:
    """Return ``model`` if it is None, a torch module or ``{"path": "pkg.Class_or_function", "args": {...}}``
    (built later, at run start, by :func:`resolve_model`); else raise ValueError naming it."""
    if model is None or isinstance(model, torch.nn.Module):
        return model
    if (isinstance(model, dict) and isinstance(model.get("path"), str) and model["path"]
            and set(model) <= {"path", "args"} and isinstance(model.get("args") or {}, dict)):
        return model
    raise ValueError(f"model must be None, a torch.nn.Module or {{'path': 'module.function', 'args': {{...}}}}, "
                     f"got {model!r}")


def check_weights_fit(weights: Mapping[str, Any], model: torch.nn.Module, what: str) -> None:
    """Raise ValueError naming the first parameter of ``weights`` that ``model`` lacks or shapes differently."""
    state = model.state_dict()
    for name, value in weights.items():
        if name not in state:
            raise ValueError(f"{what}: parameter {name!r} is not in the model (the model has {len(state)} entries)")
        if tuple(np.shape(value)) != tuple(state[name].shape):
            raise ValueError(
                f"{what}: parameter {name!r} has shape {tuple(np.shape(value))}, the model expects "
                f"{tuple(state[name].shape)}"
            )


def load_weights(model: torch.nn.Module, weights: Mapping[str, Any], what: str) -> None:
    """Copy numpy/tensor ``weights`` into ``model`` (names and shapes checked, other entries left as they are)."""
    check_weights_fit(weights, model, what)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(torch.as_tensor(np.asarray(value)).to(state[name].dtype))


def state_to_numpy(model: torch.nn.Module, names, copy: bool = True) -> dict[str, np.ndarray]:
    """The named entries of ``model.state_dict()`` as numpy arrays on the CPU: copies, or with ``copy=False``
    views of a CPU model's own tensors (for a caller that only reads them before the model is dropped)."""
    state = model.state_dict()
    arrays = {name: state[name].detach().cpu().numpy() for name in names}
    return {name: a.copy() for name, a in arrays.items()} if copy else arrays
