"""Build models from config values and move weights between NVFlare (numpy) and torch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
    if (
        isinstance(model, dict)
        and isinstance(model.get("path"), str)
        and model["path"]
        and set(model) <= {"path", "args"}
        and isinstance(model.get("args") or {}, dict)
    ):
        return model
    raise ValueError(
        f"model must be None, a torch.nn.Module or {{'path': 'module.function', 'args': {{...}}}}, got {model!r}"
    )


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


class ReusedModel:
    """The user's model, built once by ``models.get_model()`` and reused for every task of a site.

    Building a model initialises every parameter (~0.5 s for 100M parameters) only for the received weights to
    overwrite them. :meth:`prepare` instead loads the received weights into the model it already has and puts back
    what a freshly built model has for the rest: the entries not received (their values right after the build), train
    mode, each parameter's ``requires_grad``, and no gradients. A model whose entries the user's code changed (names,
    shapes or dtypes), or a task that leaves out an entry whose built value was not kept, is not reused
    (:meth:`fits` is False): the caller builds a new one.

    Args:
        model: the freshly built model (on the CPU, before any task used it).
        received: the names of the entries the first task carries (the others' built values are kept).
    """

    def __init__(self, model: torch.nn.Module, received):
        self.model = model
        state = model.state_dict()
        self.built = {name: value.detach().clone() for name, value in state.items() if name not in received}
        self.layout = {name: (tuple(value.shape), value.dtype) for name, value in state.items()}
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}

    def fits(self, received) -> bool:
        """Whether the model can take a task carrying ``received`` entries as a freshly built one would."""
        state = self.model.state_dict()
        layout = {name: (tuple(value.shape), value.dtype) for name, value in state.items()}
        return layout == self.layout and all(name in received or name in self.built for name in state)

    def prepare(self, weights: Mapping[str, Any], what: str) -> torch.nn.Module:
        """Load ``weights`` (checked as :func:`load_weights` checks them) and reset the rest as built; return the
        model."""
        load_weights(self.model, weights, what)
        state = self.model.state_dict()
        with torch.no_grad():
            for name, value in self.built.items():
                if name not in weights:
                    state[name].copy_(value)
        for name, param in self.model.named_parameters():
            param.requires_grad_(self.requires_grad.get(name, True))
            param.grad = None
        self.model.train()
        return self.model
