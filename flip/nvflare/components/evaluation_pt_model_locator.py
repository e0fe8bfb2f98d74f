"""EvaluationPTModelLocator: the model(s) an evaluation-only job evaluates, from the registry or the safehouse."""

from __future__ import annotations

from nvflare.apis.dxo import DXO
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from flip.constants import FlipProp, RunFile
from flip.errors import FlipError, LookupFailed
from flip.nvflare.components.initial_pt_model_locator import (
    check_exclude_vars,
    initial_state,
    server_model_id,
    to_numpy_state,
    weights_dxo,
)
from flip.storage.registry import ModelRegistry, RegistryError


class EvaluationPTModelLocator(ModelLocator):
    """Provide the models to evaluate: ``locate_model(fl_ctx) -> {model_id: WEIGHTS DXO}``.

    The model ids come from the EvaluateModels workflow (its ``model_ids``) or, by default, the run's own model
    id. Each model is the global model of its latest *verified* run in the model registry
    (``FLIP_MODELS_BUCKET``); a model with no verified run falls back to its initial model (the job's
    ``custom/initial_model.pt``, else the platform's safehouse copy). After ``locate_model`` the attribute
    ``models`` holds what was located.

    Args:
        exclude_vars: regex of parameter names to leave out, or None.
    """

    def __init__(self, exclude_vars=None):
        super().__init__()
        self.exclude_vars = check_exclude_vars(exclude_vars)
        self.models: dict[str, DXO] | None = None

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        return list(fl_ctx.get_prop(FlipProp.EVALUATE_MODEL_IDS) or [server_model_id(fl_ctx)])

    def locate_model(self, fl_ctx: FLContext) -> dict[str, DXO]:
        try:
            names = self.get_model_names(fl_ctx)
        except LookupFailed as exc:
            self.system_panic(f"{type(self).__name__}: {exc}", fl_ctx)
            return {}
        registry = ModelRegistry()
        self.models = {}
        for model_id in names:
            try:
                record = registry.run(model_id, artifact=RunFile.GLOBAL_MODEL)
                state, source = to_numpy_state(registry.load_run(record)), f"run {record.run_id}"
            except RegistryError:
                found = initial_state(fl_ctx, model_id)
                if found is None:
                    raise FlipError(f"model {model_id} has no verified run in s3://{registry.bucket} and no "
                                    "initial model in the workspace or the safehouse") from None
                state, source = found
            self.models[model_id] = weights_dxo(state, self.exclude_vars)
            self.log_info(fl_ctx, f"model {model_id} to evaluate: {source}, {len(self.models[model_id].data)} tensors")
        return self.models
