"""RUN_VALIDATOR and RUN_EVALUATOR: score a model sent by the server with the user's validator/evaluator."""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipTask, PTConstants, UserFile
from flip.metrics import clean_metrics
from flip.nvflare.executors.base import UserCodeExecutor, call_user, check_task_name
from flip.nvflare.executors.user_code import display_path


class ModelScoringExecutor(UserCodeExecutor):
    """Load the received WEIGHTS into ``models.get_model()`` and reply with the user's metrics (METRICS DXO).

    The user's class decides the contract (flip.nvflare.executors.base): a FLIP app's ``Executor`` gets every
    task delegated; a MONAI ``ClientAlgo`` is asked to ``evaluate``; otherwise our plain contract.
    """

    user_method = ""
    #: the keyword FLIP builds the user's class with for the task name (``validate_task_name``...)
    task_keyword = ""

    def __init__(self, task_name: str, project_id: str = "", query: str = ""):
        super().__init__(project_id=project_id, query=query)
        self.plain_methods = (self.user_method,)
        setattr(self, self.task_keyword, check_task_name(self.task_keyword, task_name))

    @property
    def task_name(self) -> str:
        return getattr(self, self.task_keyword)

    def flip_keywords(self) -> dict[str, Any]:
        return {self.task_keyword: self.task_name, "project_id": self.project_id, "query": self.query}

    def monai_keywords(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "query": self.query, self.task_keyword: self.task_name}

    def algo_tasks(self) -> dict[str, str]:
        """What each task does to a MONAI ClientAlgo: evaluate."""
        return {self.task_name: "evaluate"}

    def run_task(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "model")
        scorer = self.user_instance(self.user_file, self.user_class, self.user_method)  # the cause to name first
        ctx = self.context(fl_ctx, shareable, abort_signal)
        _, model = self.model_from_task(task_name, shareable, ctx.device, ctx.site_name)
        model.eval()
        where = f"{display_path(self.user_file)}: {self.user_class}.{self.user_method}"
        metrics = clean_metrics(call_user(where, getattr(scorer, self.user_method), model, ctx), where)
        self.log_info(fl_ctx, f"{task_name} {owner}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()


class RUN_VALIDATOR(ModelScoringExecutor):  # noqa: N801 - FLIP's documented executor name
    """Validation (``validate``): ``FLIP_VALIDATOR(config).validate(model, ctx) -> metrics``; a FLIP app's
    ``FLIP_VALIDATOR(validate_task_name=, project_id=, query=)`` Executor or MONAI ClientAlgo as FLIP runs it.

    Args:
        validate_task_name: the task's name (FLIP's multi-stage jobs: ``validate_ae``...). Default ``validate``.
        project_id, query: FLIP's project and cohort query, given to a FLIP app. Default "".
    """

    user_file, user_class, user_method = UserFile.VALIDATOR, UserFile.VALIDATOR_CLASS, "validate"
    task_keyword = "validate_task_name"

    def __init__(self, validate_task_name: str = FlipTask.VALIDATE, project_id: str = "", query: str = ""):
        super().__init__(validate_task_name, project_id=project_id, query=query)
        self.tasks = (self.validate_task_name,)


class RUN_EVALUATOR(ModelScoringExecutor):  # noqa: N801 - FLIP's documented executor name
    """Evaluation-only jobs: ``FLIP_EVALUATOR(config).evaluate(model, ctx) -> metrics`` (our EvaluateModels sends
    ``evaluate``, one model per task); a FLIP app's ``FLIP_EVALUATOR(evaluate_task_name=, project_id=, query=)``
    Executor or MONAI ClientAlgo as FLIP runs it (FlipEvaluation sends ``evaluation``: every model in one
    COLLECTION).

    Args:
        evaluate_task_name: the task's name. Default ``evaluation`` (FLIP's); our plain contract also serves
            ``evaluate``, so jobs written before this argument existed run unchanged.
        project_id, query: FLIP's project and cohort query, given to a FLIP app. Default "".
    """

    user_file, user_class, user_method = UserFile.EVALUATOR, UserFile.EVALUATOR_CLASS, "evaluate"
    task_keyword = "evaluate_task_name"

    def __init__(self, evaluate_task_name: str = PTConstants.EvalTaskName, project_id: str = "", query: str = ""):
        super().__init__(evaluate_task_name, project_id=project_id, query=query)
        self.tasks = tuple(dict.fromkeys((self.evaluate_task_name, FlipTask.EVALUATE)))
