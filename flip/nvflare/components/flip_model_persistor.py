"""FlipModelPersistor: NVFlare's PTFileModelPersistor that starts from a chosen model and can keep each round's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import ModelLearnable, ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from flip.checks import check_bool, check_component_id
from flip.constants import ComponentId, RunFile, UserFile
from flip.errors import FlipError, LookupFailed, NonFiniteModelError
from flip.methods.weighted import check_finite
from flip.nvflare.components.initial_pt_model_locator import InitialModel, InitialPTModelLocator
from flip.nvflare.utils import get_component, run_dir, short_reason
from flip.storage.layout import round_model_key
from flip.storage.model_files import first_mismatch

#: what the report and the manifest say when the run started from models.get_model()
FRESH_MODEL = f"models.{UserFile.MODEL_FUNCTION}() (freshly initialised)"


class FlipModelPersistor(PTFileModelPersistor):
    """The server's model on disk, as NVFlare's PTFileModelPersistor keeps it, plus what FLIP's jobs need.

    - **The model a run starts from** (``load_model``): the InitialPTModelLocator ``initial_model_locator_id`` is
      asked first: a registry model the job names, else the workspace's or the platform's safehouse initial model;
      with none, ``models.get_model()``'s own weights. The source is logged, kept as ``initial_source`` (the run
      report names it) and ``initial_info`` (the run's manifest records it). A model whose keys or shapes do not
      fit ``models.get_model()`` exactly, or that cannot be loaded, ends the run in ERROR naming the first
      mismatching key (or the cause), before any round. A registry model's preprocessing model goes with the run
      (``preprocessing.pt`` among its artifacts).
    - **Per-round global models** (``keep_round_models``): each saved global model is also written as the run's
      artifact ``rounds/global_model_round_<n>.pt`` (a plain state dict), uploaded with the run.

    Args:
        model: as PTFileModelPersistor (``{"path": "models.get_model"}``).
        initial_model_locator_id: the InitialPTModelLocator's component id; ``""``: none (always get_model()).
        keep_round_models: keep every round's global model. Default False.
        Other arguments: as PTFileModelPersistor.
    """

    def __init__(
        self,
        model=None,
        initial_model_locator_id: str = ComponentId.INITIAL_MODEL_LOCATOR,
        keep_round_models: bool = False,
        **kwargs: Any,
    ):
        super().__init__(model=model, **kwargs)
        self.initial_model_locator_id = check_component_id(
            "initial_model_locator_id", initial_model_locator_id, empty=True
        )
        self.keep_round_models = check_bool("keep_round_models", keep_round_models)
        self.initial_source: str | None = None
        self.initial_info: dict[str, Any] | None = None
        self._loaded: ModelLearnable | None = None

    def load_model(self, fl_ctx: FLContext) -> ModelLearnable | None:
        if self._loaded is not None:  # once per run: a second caller gets the same starting point
            return self._loaded
        try:
            initial = self._find_initial(fl_ctx)
            if initial is not None:
                self._load_into_model(initial)
        except (FlipError, ValueError, OSError) as exc:
            self.system_panic(f"cannot start from the initial model: {short_reason(exc)}", fl_ctx)
            return None
        if initial is None:
            self.initial_source, self.initial_info = FRESH_MODEL, {"source": "get_model"}
        else:
            self.initial_source, self.initial_info = initial.source, initial.info
        self.log_info(fl_ctx, f"the run starts from {self.initial_source}")
        self._loaded = super().load_model(fl_ctx)
        return self._loaded

    def _find_initial(self, fl_ctx: FLContext) -> InitialModel | None:
        if not self.initial_model_locator_id:
            return None
        try:
            locator = get_component(
                fl_ctx, self.initial_model_locator_id, InitialPTModelLocator, "initial model locator"
            )
        except LookupFailed as exc:
            raise FlipError(str(exc)) from exc
        return locator.find(fl_ctx, preprocessing_dir=run_dir(fl_ctx) / RunFile.ARTIFACTS_DIR)

    def _load_into_model(self, initial: InitialModel) -> None:
        """Check that ``initial`` fits models.get_model() exactly and copy it in (so the persistor's model is it)."""
        if not isinstance(self.model, torch.nn.Module):
            raise FlipError("the persistor has no model to load the initial weights into")
        reference = self.model.state_dict()
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in initial.state.items()}
        reason = first_mismatch(state, reference, f"the initial model ({initial.source})")
        if reason:
            raise FlipError(reason)
        check_finite(initial.state, f"the initial model ({initial.source})")
        self.model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()}, strict=True)

    def save_model(self, ml: ModelLearnable, fl_ctx: FLContext):
        super().save_model(ml, fl_ctx)
        if self.keep_round_models:
            self._save_round_model(ml, fl_ctx)

    def _save_round_model(self, ml: ModelLearnable, fl_ctx: FLContext) -> Path | None:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND)
        if not isinstance(current, int) or not ml:
            return None
        weights = ml[ModelLearnableKey.WEIGHTS]
        key = round_model_key(current + 1)
        try:
            check_finite(weights, key)
        except NonFiniteModelError as exc:
            self.log_error(fl_ctx, f"{exc}: not kept")
            return None
        path = run_dir(fl_ctx) / RunFile.ARTIFACTS_DIR / key
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()}, path)
        self.log_info(fl_ctx, f"round {current + 1}: global model kept as {key}")
        return path
