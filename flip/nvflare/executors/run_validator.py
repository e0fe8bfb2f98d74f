"""RUN_VALIDATOR and RUN_EVALUATOR: score a model sent by the server with the user's validator/evaluator."""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipTask, UserFile
from flip.metrics import clean_metrics
from flip.nvflare.executors.base import UserCodeExecutor, call_user
from flip.nvflare.executors.user_code import display_path


class ModelScoringExecutor(UserCodeExecutor):
    """Load the received WEIGHTS into ``models.get_model()`` and reply with the user's metrics (METRICS DXO)."""

    user_file = ""
    user_class = ""
    user_method = ""

    def run_task(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "model")
        ctx = self.context(fl_ctx, shareable, abort_signal)
        scorer = self.user_instance(self.user_file, self.user_class, self.user_method)
        _, model = self.model_from_task(task_name, shareable, ctx.device)
        model.eval()
        where = f"{display_path(self.user_file)}: {self.user_class}.{self.user_method}"
        metrics = clean_metrics(call_user(where, getattr(scorer, self.user_method), model, ctx), where)
        self.log_info(fl_ctx, f"{task_name} {owner}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()


class RUN_VALIDATOR(ModelScoringExecutor):  # noqa: N801 - FLIP's documented executor name
    """Cross-site validation (``validate``): ``FLIP_VALIDATOR(config).validate(model, ctx) -> metrics``."""

    tasks = (FlipTask.VALIDATE,)
    user_file, user_class, user_method = UserFile.VALIDATOR, UserFile.VALIDATOR_CLASS, "validate"


class RUN_EVALUATOR(ModelScoringExecutor):  # noqa: N801 - FLIP's documented executor name
    """Evaluation-only jobs (``evaluate``): ``FLIP_EVALUATOR(config).evaluate(model, ctx) -> metrics``."""

    tasks = (FlipTask.EVALUATE,)
    user_file, user_class, user_method = UserFile.EVALUATOR, UserFile.EVALUATOR_CLASS, "evaluate"
