"""Model files as the registry takes them: loaded without running pickled code, checked against the user's
``models.py``, measured (parameter count, input and output shapes) and, for a preprocessing model, run on a dummy
input of its declared shape.

A model file is a ``torch.save``d state dict (loaded with ``weights_only=True``) or a TorchScript archive (loaded
with ``torch.jit.load``, which runs TorchScript only, never Python pickles). A state dict needs its module: the
user's ``models.py`` builds it (``get_model()`` for the model, ``get_preprocessing()`` for a preprocessing model).
"""

from __future__ import annotations

import importlib.util
import sys
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from flip.errors import RegistryError

#: the function of models.py that builds the model, and the one that builds a preprocessing model
MODEL_FUNCTION, PREPROCESSING_FUNCTION = "get_model", "get_preprocessing"
#: at most this many dimensions in a declared input shape, each at most MAX_DIM
MAX_RANK, MAX_DIM = 8, 100_000


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a ``torch.save`` file has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_model_file(path: str | Path) -> Any:
    """Load a model artifact without running pickled code: a state dict (weights_only) or TorchScript.

    Raises:
        RegistryError: the file is neither (e.g. a pickle that needs arbitrary code to load).
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"model file {str(path)!r} not found")
    try:
        if is_torchscript(path):
            return torch.jit.load(str(path), map_location="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a file it refuses to load safely
        raise RegistryError(f"{path.name} is neither a weights-only torch.save file nor TorchScript") from exc


def file_format(loaded: Any) -> str:
    """``torchscript`` or ``state_dict`` (what load_model_file returned)."""
    return "torchscript" if isinstance(loaded, torch.jit.ScriptModule) else "state_dict"


def state_of(loaded: Any, what: str) -> dict[str, torch.Tensor]:
    """The state dict of what load_model_file returned (a TorchScript module's, or the dict itself; an NVFlare
    persistor checkpoint ``{"model": {...}}`` is unwrapped).

    Raises:
        RegistryError: it is not a dict of tensors (named).
    """
    if isinstance(loaded, torch.jit.ScriptModule):
        return dict(loaded.state_dict())
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not loaded:
        raise RegistryError(f"{what} is not a state dict: got {type(loaded).__name__}")
    bad = next((k for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise RegistryError(f"{what} is not a state dict of tensors: entry {bad!r} is a {type(loaded[bad]).__name__}")
    return loaded


def parameter_count(state: Mapping[str, Any]) -> int:
    """The number of floating-point values of a state dict (parameters and float buffers; counters excluded)."""
    return sum(int(v.numel()) for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())


def first_mismatch(state: Mapping[str, Any], reference: Mapping[str, Any], what: str) -> str | None:
    """Why ``state`` does not fit ``reference`` (a model's state dict), naming the first mismatching key: one the
    model lacks, one it has that ``state`` lacks, or a shape that differs; None if every key and shape fits.

    The one rule for a model that must load strictly into ``models.get_model()`` (an initial model, an upload
    checked with ``--models``)."""
    for name, value in state.items():
        if name not in reference:
            return f"{what}: key {name!r} is not in models.get_model() (which has {len(reference)} entries)"
        have, want = tuple(value.shape), tuple(reference[name].shape)
        if have != want:
            return f"{what}: key {name!r} has shape {have}, models.get_model() has {want}"
    missing = next((name for name in reference if name not in state), None)
    if missing is not None:
        return f"{what}: key {missing!r} of models.get_model() is missing ({len(state)} of {len(reference)} keys)"
    return None


def check_input_shape(value: Any) -> tuple[int, ...]:
    """Return the shape of one input (no batch dimension) as a tuple, from ``(8, 8)`` or ``"8,8"``.

    Raises:
        ValueError: not 1 to MAX_RANK whole numbers in [1, MAX_DIM] (named).
    """
    parts = value.split(",") if isinstance(value, str) else value
    try:
        shape = tuple(int(p) for p in parts)
        ok = (
            1 <= len(shape) <= MAX_RANK
            and all(1 <= d <= MAX_DIM for d in shape)
            and (not isinstance(value, str) or all(p.strip().isdigit() for p in parts))
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"input shape must be 1 to {MAX_RANK} whole numbers in [1, {MAX_DIM}] such as '1,28,28' "
            f"(one input, no batch dimension), got {value!r}"
        )
    return shape


def load_models_module(path: str | Path) -> ModuleType:
    """Import the user's ``models.py`` from ``path`` (its folder importable while it loads).

    Raises:
        RegistryError: it is not a file or fails to import (named, with the cause).
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"models file {str(path)!r} not found: give the app's models.py (defining get_model())")
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_flip_models_{abs(hash(str(path.resolve())))}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything while it imports
        raise RegistryError(f"models file {path.name} failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.remove(str(path.resolve().parent))


def build_module(models: ModuleType, function: str, what: str) -> torch.nn.Module:
    """Call ``models.<function>()`` and check it gives a torch module."""
    build = getattr(models, function, None)
    if not callable(build):
        raise RegistryError(f"{what} is a state dict: its models.py must define {function}() returning the module")
    try:
        module = build()
    except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
        raise RegistryError(f"models.{function}() failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise RegistryError(f"models.{function}() gave a {type(module).__name__}: expected a torch.nn.Module")
    return module


def module_of(loaded: Any, models: ModuleType | None, function: str, what: str) -> torch.nn.Module:
    """A runnable module: the TorchScript module itself, or ``models.<function>()`` with the state dict loaded
    strictly (the first mismatching key named).

    Raises:
        RegistryError: a state dict without models.py, or one that does not fit the module.
    """
    if isinstance(loaded, torch.jit.ScriptModule):
        return loaded.eval()
    if models is None:
        raise RegistryError(f"{what} is a state dict: give the app's models.py (--models FILE) so it can be built")
    module = build_module(models, function, what)
    state = state_of(loaded, what)
    reason = first_mismatch(state, module.state_dict(), what)
    if reason:
        raise RegistryError(reason.replace("models.get_model()", f"models.{function}()"))
    module.load_state_dict(state, strict=True)
    return module.eval()


@torch.no_grad()
def output_shape(module: torch.nn.Module, input_shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Run ``module`` on a zero batch of one input of ``input_shape``; return one output's shape.

    Raises:
        RegistryError: it fails on that input, or does not return a finite tensor (named).
    """
    try:
        out = module(torch.zeros((1, *input_shape)))
    except Exception as exc:  # noqa: BLE001 - a module may raise anything on an input of the wrong shape
        raise RegistryError(
            f"{what} does not run on an input of shape {input_shape} (batch of 1): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.dim() < 1 or out.shape[0] != 1:
        raise RegistryError(
            f"{what} must return a tensor with the batch dimension first, got "
            f"{type(out).__name__}{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}"
        )
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise RegistryError(f"{what} returns NaN or Inf on a zero input of shape {input_shape}")
    return tuple(out.shape[1:])


@dataclass(frozen=True)
class ModelFileInfo:
    """What a checked model file is: its format, parameter count and shapes (None: unknown)."""

    format: str
    parameter_count: int
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None

    def manifest(self) -> dict[str, Any]:
        info: dict[str, Any] = {"format": self.format, "parameter_count": self.parameter_count}
        if self.input_shape is not None:
            info["input_shape"] = list(self.input_shape)
        if self.output_shape is not None:
            info["output_shape"] = list(self.output_shape)
        return info


def check_model_file(
    path: str | Path, models: ModuleType | None = None, input_shape: tuple[int, ...] | None = None
) -> ModelFileInfo:
    """Check a model to register: it loads safely; with ``models`` (or as TorchScript) it builds, and with
    ``input_shape`` it runs on a dummy input of that shape (its output shape recorded).

    Raises:
        RegistryError: it cannot be loaded safely, does not fit models.get_model(), or does not run (named).
    """
    path = Path(path)
    loaded = load_model_file(path)
    state = state_of(loaded, path.name)
    count = parameter_count(state)
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise RegistryError(f"{path.name} holds NaN or Inf: a model that is not finite is never registered")
    if models is None and not isinstance(loaded, torch.jit.ScriptModule):
        return ModelFileInfo(file_format(loaded), count, input_shape)
    module = module_of(loaded, models, MODEL_FUNCTION, path.name)
    out = output_shape(module, input_shape, path.name) if input_shape is not None else None
    return ModelFileInfo(file_format(loaded), count, input_shape, out)


def check_preprocessing_file(
    path: str | Path, input_shape: tuple[int, ...], models: ModuleType | None = None
) -> ModelFileInfo:
    """Check a preprocessing model: TorchScript, or a state dict built by ``models.get_preprocessing()``; it must
    run on a dummy input of the declared ``input_shape`` and return a finite tensor.

    Raises:
        RegistryError: it cannot be loaded safely, built, or run on that input (named).
    """
    path = Path(path)
    loaded = load_model_file(path)
    module = module_of(loaded, models, PREPROCESSING_FUNCTION, f"preprocessing model {path.name}")
    count = parameter_count(dict(module.state_dict()))
    out = output_shape(module, input_shape, f"preprocessing model {path.name}")
    return ModelFileInfo(file_format(loaded), count, input_shape, out)


def shape_text(shape: Any) -> str:
    """``1×28×28``, or ``unknown``."""
    return "×".join(str(d) for d in shape) if shape else "unknown"


def human_count(count: Any) -> str:
    """``4,810``, or ``unknown``."""
    return f"{count:,}" if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else "unknown"


__all__ = [
    "MODEL_FUNCTION",
    "PREPROCESSING_FUNCTION",
    "ModelFileInfo",
    "build_module",
    "check_input_shape",
    "check_model_file",
    "check_preprocessing_file",
    "file_format",
    "first_mismatch",
    "human_count",
    "is_torchscript",
    "load_model_file",
    "load_models_module",
    "module_of",
    "output_shape",
    "parameter_count",
    "shape_text",
    "state_of",
]
