"""EvaluateModels: send each model to evaluate to every site; no training."""

from __future__ import annotations

from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.checks import check_component_id, check_model_id, check_positive_int
from flip.constants import ComponentId, FlipEvent, FlipProp, FlipTask
from flip.errors import LookupFailed
from flip.nvflare.components.evaluation_pt_model_locator import EvaluationPTModelLocator
from flip.nvflare.controllers.base import FlipController
from flip.nvflare.utils import get_component


class EvaluateModels(FlipController):
    """Evaluate the model(s) given by the job's EvaluationPTModelLocator at every site.

    Like NVFlare's CrossSiteModelEval, it asks the locator for ``get_model_names(fl_ctx)`` and locates each with
    ``locate_model(name, fl_ctx)`` (all before the first is sent). For each model, the ``evaluate`` task carries its weights to every site (RUN_EVALUATOR runs the user's
    ``evaluator.py``); each site's metrics fire ``flip.evaluation_result_received`` for the
    EvaluationJsonGenerator. The run fails if fewer than ``min_clients`` sites evaluated a model.

    Args:
        model_ids: the models to evaluate (registry model ids); None: the job's own model id.
        min_clients: sites that must evaluate every model (>= 1). Default 1.
        timeout: seconds per model (>= 1). Default 600.
        wait_time_after_min_received: seconds to wait for the other sites once min_clients answered (>= 0).
        model_locator_id: id of the EvaluationPTModelLocator. Default ``model_locator``.
    """

    def __init__(
        self,
        model_ids: list[str] | None = None,
        min_clients: int = 1,
        timeout: int = 600,
        wait_time_after_min_received: int = 60,
        model_locator_id: str = ComponentId.MODEL_LOCATOR,
    ):
        super().__init__()
        if model_ids is not None and (not isinstance(model_ids, list) or not model_ids):
            raise ValueError(f"model_ids must be a non-empty list of model ids or None, got {model_ids!r}")
        self.model_ids = [check_model_id(m) for m in model_ids] if model_ids else None
        self.min_clients = check_positive_int("min_clients", min_clients)
        self.timeout = check_positive_int("timeout", timeout)
        self.wait_time_after_min_received = check_positive_int(
            "wait_time_after_min_received", wait_time_after_min_received, minimum=0
        )
        self.model_locator_id = check_component_id("model_locator_id", model_locator_id)
        self.locator = None
        self._ok: dict[str, set[str]] = {}

    def start_controller(self, fl_ctx: FLContext) -> None:
        try:
            self.locator = get_component(fl_ctx, self.model_locator_id, EvaluationPTModelLocator, "model locator")
        except LookupFailed as exc:
            self.system_panic(f"EvaluateModels: {exc}", fl_ctx)
            return
        clients = self._engine.get_clients()
        if len(clients) < self.min_clients:
            self.system_panic(
                f"EvaluateModels: min_clients is {self.min_clients} but only {len(clients)} sites joined the run",
                fl_ctx,
            )

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        if self.model_ids:
            fl_ctx.set_prop(FlipProp.EVALUATE_MODEL_IDS, self.model_ids, private=True, sticky=False)
        try:
            names = self.locator.get_model_names(fl_ctx)
        except LookupFailed as exc:
            self.system_panic(f"{type(self.locator).__name__}: {exc}", fl_ctx)
            return
        # every model is located before any is sent (as CrossSiteModelEval does): a model that cannot be found
        # fails the run before the sites spend time on the others
        models = {name: self.locator.locate_model(name, fl_ctx) for name in names}
        if not models:
            self.system_panic("EvaluateModels: the model locator found no model to evaluate", fl_ctx)
            return
        self.fire_event(FlipEvent.EVALUATION_STARTED, fl_ctx)
        for name, dxo in models.items():
            if abort_signal.triggered:
                return
            data = dxo.to_shareable()
            data.set_header(AppConstants.MODEL_OWNER, name)
            self._ok[name] = set()
            task = Task(
                name=FlipTask.EVALUATE,
                data=data,
                props={AppConstants.MODEL_OWNER: name},
                timeout=self.timeout,
                result_received_cb=self._result_received,
            )
            self.broadcast_and_wait(
                task=task,
                fl_ctx=fl_ctx,
                min_responses=self.min_clients,
                wait_time_after_min_received=self.wait_time_after_min_received,
                abort_signal=abort_signal,
            )
            if len(self._ok[name]) < self.min_clients:
                self.system_panic(
                    f"model {name} was evaluated by {len(self._ok[name])} sites, fewer than "
                    f"min_clients ({self.min_clients})",
                    fl_ctx,
                )
                return
            self.log_info(fl_ctx, f"model {name} evaluated at {', '.join(sorted(self._ok[name]))}")

    def _result_received(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        name = client_task.task.props[AppConstants.MODEL_OWNER]
        result = client_task.result
        site = client_task.client.name
        if not isinstance(result, Shareable) or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            self.log_error(fl_ctx, f"site {site} could not evaluate model {name}")
            return
        self._ok[name].add(site)
        fl_ctx.set_prop(AppConstants.MODEL_OWNER, name, private=True, sticky=False)
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, site, private=True, sticky=False)
        fl_ctx.set_prop(FlipProp.EVALUATION_RESULT, result, private=True, sticky=False)
        self.fire_event(FlipEvent.EVALUATION_RESULT_RECEIVED, fl_ctx)
        client_task.result = None
