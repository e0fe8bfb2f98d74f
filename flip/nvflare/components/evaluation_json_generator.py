"""EvaluationJsonGenerator: each evaluated model's metrics per site, as JSON."""

from __future__ import annotations

from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip.constants import FlipEvent, FlipProp, RunFile
from flip.nvflare.components.validation_json_generator import ValidationJsonGenerator


class EvaluationJsonGenerator(ValidationJsonGenerator):
    """Collect ``flip.evaluation_result_received`` results; write ``{site: {model_id: metrics}}`` on request.

    EvaluateModels sends one model per task and names it (``{site: {model_id: metrics}}``); FlipEvaluation sends
    every model in one task and each site answers ``{model_name: metrics}``, recorded whole as ``{site: reply}``
    (the same shape). Metrics may be nested (FLIP's evaluators); bad entries and non-finite numbers are dropped.
    The ServerEventHandler (its ``validation_json_generator_id`` names this component in an evaluation job)
    writes the file at the end of the run, before the results are uploaded.

    Args:
        results_dir: folder under the run folder. Default ``cross_site_eval``.
        json_file_name: file name. Default ``evaluation_results.json``.
    """

    def __init__(self, results_dir=RunFile.EVALUATION_DIR, json_file_name=RunFile.EVALUATION_RESULTS_FILE):
        super().__init__(results_dir=results_dir, json_file_name=json_file_name)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == AppEventType.VALIDATION_RESULT_RECEIVED:
            return  # cross-site validation results belong to the ValidationJsonGenerator
        if event_type == FlipEvent.EVALUATION_RESULT_RECEIVED:
            reply = fl_ctx.get_prop(FlipProp.EVALUATION_REPLY)
            if reply is not None:  # FlipEvaluation: one reply for every model
                site = fl_ctx.get_prop(AppConstants.DATA_CLIENT)
                metrics = self.checked_result(fl_ctx, reply, f"evaluation at {site}", site) if site else None
                if metrics is not None:
                    self._val_results[site] = metrics
                return
            fl_ctx.set_prop(
                AppConstants.VALIDATION_RESULT, fl_ctx.get_prop(FlipProp.EVALUATION_RESULT), private=True, sticky=False
            )
            event_type = AppEventType.VALIDATION_RESULT_RECEIVED  # the parent records it the same way
        super().handle_event(event_type, fl_ctx)
