"""InitialPTModelLocator: a run's initial model: a registry model (when the job names one), else the workspace's or
the platform's safehouse copy."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from flip import FLIP
from flip.checks import check_regex
from flip.constants import ComponentId, RunFile
from flip.errors import FlipError, LookupFailed
from flip.nvflare.components.server_event_handler import ServerEventHandler
from flip.nvflare.models import check_model_spec, check_weights_fit, resolve_model
from flip.nvflare.utils import app_custom_dir, get_component
from flip.storage.registry import ModelRegistry, load_model_file, parse_model_ref

INITIAL_MODEL = "initial_model"
INITIAL_MODEL_FILE = "initial_model.pt"


def to_numpy_state(loaded: Any) -> dict[str, np.ndarray]:
    """A state dict (or a TorchScript module's) as numpy arrays."""
    if isinstance(loaded, torch.jit.ScriptModule):
        loaded = loaded.state_dict()
    if isinstance(loaded, dict) and "model" in loaded and isinstance(loaded["model"], dict):
        loaded = loaded["model"]  # an NVFlare persistor checkpoint
    if not isinstance(loaded, dict):
        raise ValueError(f"expected a state dict, got {type(loaded).__name__}")
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in loaded.items()}


def check_exclude_vars(exclude_vars) -> str | None:
    """Return ``exclude_vars`` if it is None or a regular expression."""
    return check_regex("exclude_vars", exclude_vars)


def exclude_weights(state: dict[str, Any], exclude_vars: str | None) -> dict[str, Any]:
    """``state`` without the entries whose name matches the regex ``exclude_vars`` (all of it if no regex)."""
    if exclude_vars:
        pattern = re.compile(exclude_vars)
        state = {k: v for k, v in state.items() if not pattern.search(k)}
    return state


def weights_dxo(state: dict[str, np.ndarray], exclude_vars: str | None) -> DXO:
    return DXO(data_kind=DataKind.WEIGHTS, data=exclude_weights(state, exclude_vars))


def server_model_id(fl_ctx: FLContext) -> str:
    """The run's model id, as the ServerEventHandler knows it."""
    return get_component(fl_ctx, ComponentId.SERVER_EVENT_HANDLER, ServerEventHandler, "server event handler").model_id


@dataclass
class InitialModel:
    """A run's initial weights and where they came from.

    Attributes:
        state: the weights, numpy arrays by name.
        source: where from, as the log and the report name it (``registry model <id> run <run>``, ``workspace
            custom/initial_model.pt``, ``dev safehouse``).
        info: what the run's manifest records of it (``{"source": ..., "model_id": ..., "run_id": ...}``, and a
            registry model's name, description, owner and shapes).
        preprocessing: the registry model's preprocessing model, downloaded and verified, if it has one.
    """

    state: dict[str, np.ndarray]
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    preprocessing: Path | None = None


def registry_initial(ref: str, preprocessing_dir: Path | None = None) -> InitialModel:
    """The global model of the registry run ``ref`` (``MODEL_ID[/RUN_ID]``: default its latest verified run), with
    its preprocessing model downloaded into ``preprocessing_dir`` (if given and it has one).

    Raises:
        RegistryError: no such model or run, it does not verify, or it cannot be loaded safely.
        StorageError: S3 cannot be read.
    """
    model_id, run_id = parse_model_ref(ref)
    registry = ModelRegistry()
    record = registry.run(model_id, run_id, RunFile.GLOBAL_MODEL)
    state = to_numpy_state(registry.load_run(record))
    info: dict[str, Any] = {"source": "registry", "model_id": model_id, "run_id": record.run_id}
    for key in ("name", "description", "owner", "input_shape", "output_shape"):
        if key in record.manifest:
            info[key] = record.manifest[key]
    preprocessing = None
    if preprocessing_dir is not None and RunFile.PREPROCESSING in record.keys:
        preprocessing_dir.mkdir(parents=True, exist_ok=True)
        preprocessing = registry.fetch(record, RunFile.PREPROCESSING, preprocessing_dir / RunFile.PREPROCESSING)
        if isinstance(record.manifest.get("preprocessing"), dict):
            info["preprocessing"] = record.manifest["preprocessing"]
    return InitialModel(state, f"registry model {model_id} run {record.run_id}", info, preprocessing)


def initial_state(fl_ctx: FLContext, model_id: str) -> tuple[dict[str, np.ndarray], str] | None:
    """The initial weights of ``model_id``: the job's custom/initial_model.pt, else the safehouse copy."""
    workspace_copy = app_custom_dir(fl_ctx) / INITIAL_MODEL_FILE
    if workspace_copy.is_file():
        return to_numpy_state(load_model_file(workspace_copy)), "workspace"
    platform = FLIP()
    path = platform.initial_model_path(model_id)
    if path is not None and Path(path).is_file():
        return to_numpy_state(load_model_file(path)), f"{platform.name} safehouse"
    return None


class InitialPTModelLocator(ModelLocator):
    """Locate the initial model of a run (model name ``initial_model``).

    In this order: the registry model the job names (``registry_model``: ``MODEL_ID[/RUN_ID]``, the latest
    verified run by default; one that cannot be served is an error, never silently skipped); else
    ``initial_model.pt`` in the job's custom/ folder (the workspace); else the platform's safehouse copy for the
    run's model id (dev: ``FLIP_LOCAL_DIR/safehouse/<model_id>/``; prod: the local copy FLIP's hub delivers with
    the job). The file may be a weights-only ``torch.save`` state dict or TorchScript. The training jobs'
    persistor (FlipModelPersistor) asks it for the weights a run starts from; with none, ``models.get_model()``.

    Args:
        exclude_vars: regex of parameter names to leave out, or None.
        model: a torch module or ``{"path": ...}`` to check the weights against, or None.
        registry_model: ``MODEL_ID`` or ``MODEL_ID/RUN_ID`` of a registry model to start from, or None (default).
    """

    def __init__(self, exclude_vars=None, model=None, registry_model: str | None = None):
        super().__init__()
        self.exclude_vars = check_exclude_vars(exclude_vars)
        self.model = check_model_spec(model)
        if registry_model is not None:
            parse_model_ref(registry_model, "registry_model")
        self.registry_model = registry_model
        self._model_module = None
        self.model_id: str | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            try:
                self.model_id = server_model_id(fl_ctx)
                self._model_module = resolve_model(self.model) if self.model is not None else None
            except (LookupFailed, ValueError) as exc:
                self.system_panic(f"{type(self).__name__}: {exc}", fl_ctx)

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        return [INITIAL_MODEL]

    def find(self, fl_ctx: FLContext, preprocessing_dir: Path | None = None) -> InitialModel | None:
        """The run's initial model by the order above, or None if there is none (the caller then builds
        ``models.get_model()``).

        Raises:
            FlipError, ValueError: the registry model (or a file found) cannot be loaded safely (named).
        """
        if self.registry_model is not None:
            return registry_initial(self.registry_model, preprocessing_dir)
        found = initial_state(fl_ctx, self.model_id)
        if found is None:
            return None
        state, source = found
        return InitialModel(state, source, {"source": source})

    def locate_model(self, model_name: str, fl_ctx: FLContext) -> DXO | None:
        if model_name != INITIAL_MODEL:
            raise ValueError(f"{type(self).__name__} locates {INITIAL_MODEL!r} only, not {model_name!r}")
        try:
            found = self.find(fl_ctx)
        except (FlipError, ValueError) as exc:
            self.log_error(fl_ctx, f"cannot load the initial model of {self.model_id}: {exc}")
            return None
        if found is None:
            self.log_warning(fl_ctx, f"no initial model for {self.model_id}: none in the workspace or the safehouse")
            return None
        state, source = found.state, found.source
        dxo = weights_dxo(state, self.exclude_vars)
        if self._model_module is not None:
            check_weights_fit(dxo.data, self._model_module, "the initial model")
        self.log_info(fl_ctx, f"initial model of {self.model_id} from the {source}: {len(dxo.data)} tensors")
        return dxo
