"""EvaluationPTModelLocator: the model(s) an evaluation-only job evaluates, from the registry or the safehouse."""

from __future__ import annotations

from nvflare.apis.dxo import DXO
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model_locator import ModelLocator

from flip.checks import check_model_id
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
    """Provide the models an evaluation-only job evaluates, as NVFlare's ModelLocator does.

    ``get_model_names(fl_ctx)`` lists the model ids: those of the EvaluateModels workflow (its ``model_ids``) or,
    by default, the run's own model id. Each model is the global model of its latest *verified* run in the model
    registry (``FLIP_MODELS_BUCKET``); a model with no verified run falls back to its initial model (the job's
    ``custom/initial_model.pt``, else the platform's safehouse copy).

    Two call forms of ``locate_model``:

    - ``locate_model(model_name, fl_ctx) -> DXO``: NVFlare's ModelLocator contract (what CrossSiteModelEval calls,
      and EvaluateModels, once per name of ``get_model_names``): the one model as a WEIGHTS DXO;
    - ``locate_model(fl_ctx) -> {model_id: DXO}``: every model of ``get_model_names`` at once (SPEC.md's form;
      ``{}`` after a system panic when the run's model id cannot be found).

    Either way the attribute ``models`` holds what was located (``{model_id: DXO}``; None before the first call of
    a run; the dict form starts it afresh).

    Args:
        exclude_vars: regex of parameter names to leave out, or None.

    Raises:
        ValueError: exclude_vars is not a regular expression.
    """

    def __init__(self, exclude_vars=None):
        super().__init__()
        self.exclude_vars = check_exclude_vars(exclude_vars)
        self.models: dict[str, DXO] | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self.models = None

    def get_model_names(self, fl_ctx: FLContext) -> list[str]:
        """The model ids to evaluate.

        Raises:
            LookupFailed: no model ids were given and the server event handler (which knows the run's model id) is
                missing.
        """
        return list(fl_ctx.get_prop(FlipProp.EVALUATE_MODEL_IDS) or [server_model_id(fl_ctx)])

    def locate_model(self, model_name, fl_ctx: FLContext | None = None):
        """Locate one model by name (``locate_model(model_id, fl_ctx) -> DXO``), or all of them
        (``locate_model(fl_ctx) -> {model_id: DXO}``); see the class docstring.

        Raises:
            ValueError: model_name is not a model id (a UUID).
            FlipError: the model has no verified run in the registry and no initial model in the workspace or the
                safehouse.
        """
        if isinstance(model_name, FLContext) and fl_ctx is None:
            return self._locate_all(model_name)
        if not isinstance(fl_ctx, FLContext):
            raise TypeError(
                f"locate_model takes (model_name, fl_ctx) or (fl_ctx), got a {type(fl_ctx).__name__} as fl_ctx"
            )
        dxo = self._locate(check_model_id(model_name), fl_ctx)
        if self.models is None:
            self.models = {}
        self.models[model_name] = dxo
        return dxo

    def _locate_all(self, fl_ctx: FLContext) -> dict[str, DXO]:
        try:
            names = self.get_model_names(fl_ctx)
        except LookupFailed as exc:
            self.system_panic(f"{type(self).__name__}: {exc}", fl_ctx)
            return {}
        self.models = {}
        for model_id in names:
            self.locate_model(model_id, fl_ctx)
        return self.models

    def _locate(self, model_id: str, fl_ctx: FLContext) -> DXO:
        registry = ModelRegistry()
        try:
            record = registry.run(model_id, artifact=RunFile.GLOBAL_MODEL)
            state, source = to_numpy_state(registry.load_run(record)), f"run {record.run_id}"
        except RegistryError:
            found = initial_state(fl_ctx, model_id)
            if found is None:
                raise FlipError(
                    f"model {model_id} has no verified run in s3://{registry.bucket} and no "
                    "initial model in the workspace or the safehouse"
                ) from None
            state, source = found
        dxo = weights_dxo(state, self.exclude_vars)
        self.log_info(fl_ctx, f"model {model_id} to evaluate: {source}, {len(dxo.data)} tensors")
        return dxo
