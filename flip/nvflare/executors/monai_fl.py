"""RUN_MONAI_FL_TRAINER, RUN_MONAI_FL_VALIDATOR, RUN_MONAI_FL_EVALUATOR: FLIP apps written as MONAI FL ClientAlgos.

FLIP's job configs name these for apps whose ``FLIP_TRAINER`` / ``FLIP_VALIDATOR`` / ``FLIP_EVALUATOR`` subclass
``monai.fl.client.ClientAlgo``; the lifecycle and the conversions are
:class:`flip.nvflare.executors.flip_apps.ClientAlgoApp`'s. A class that is not a ClientAlgo fails the task,
naming the file and what was expected.
"""

from __future__ import annotations

from typing import Any

from flip.constants import FlipTask, PTConstants
from flip.nvflare.executors.base import CLIENT_ALGO
from flip.nvflare.executors.run_trainer import RUN_TRAINER, SUBMIT_MODEL
from flip.nvflare.executors.run_validator import RUN_EVALUATOR, RUN_VALIDATOR


class RUN_MONAI_FL_TRAINER(RUN_TRAINER):  # noqa: N801 - FLIP's documented executor name
    """Drive the app's ``FLIP_TRAINER(project_id=, query=, train_task_name=)`` ClientAlgo.

    ``initialize({"fl_ctx"})`` once; for ``train_task_name``: ``train(ExchangeObject(weights), {"fl_ctx",
    "abort_signal", "current_round"})`` then ``get_weights({"fl_ctx", "weight_type": WEIGHT_DIFF})`` (the reply);
    for ``submit_model_task_name``: ``get_weights({"fl_ctx", "weight_type": WEIGHTS})``.

    Args:
        train_task_name: Default ``train``.
        submit_model_task_name: Default ``submit_model`` ("" for none).
        project_id, query: FLIP's project and cohort query. Default "".
    """

    required_contract = CLIENT_ALGO

    def __init__(
        self,
        train_task_name: str = FlipTask.TRAIN,
        submit_model_task_name: str = SUBMIT_MODEL,
        project_id: str = "",
        query: str = "",
    ):
        super().__init__(
            train_task_name=train_task_name,
            submit_model_task_name=submit_model_task_name,
            project_id=project_id,
            query=query,
        )


class RUN_MONAI_FL_VALIDATOR(RUN_VALIDATOR):  # noqa: N801 - FLIP's documented executor name
    """Drive the app's ``FLIP_VALIDATOR(project_id=, query=, validate_task_name=)`` ClientAlgo:
    ``initialize`` once, then ``evaluate(ExchangeObject(weights), {"fl_ctx", "abort_signal"})`` per task; its
    ``metrics`` are the reply.

    Args:
        validate_task_name: Default ``validate``.
        project_id, query: FLIP's project and cohort query. Default "".
    """

    required_contract = CLIENT_ALGO

    def __init__(self, validate_task_name: str = FlipTask.VALIDATE, project_id: str = "", query: str = ""):
        super().__init__(validate_task_name=validate_task_name, project_id=project_id, query=query)


class RUN_MONAI_FL_EVALUATOR(RUN_EVALUATOR):  # noqa: N801 - FLIP's documented executor name
    """Drive the app's ``FLIP_EVALUATOR(project_id=, query=, evaluate_task_name=)`` ClientAlgo: ``initialize``
    once, then ``evaluate(ExchangeObject(weights={model_name: DXO(WEIGHTS)}), {"fl_ctx", "abort_signal"})`` for
    FlipEvaluation's task; its ``metrics`` (``{model_name: metrics}``) are the reply.

    Args:
        evaluate_task_name: Default ``evaluation``.
        project_id, query: FLIP's project and cohort query. Default "".
    """

    required_contract = CLIENT_ALGO

    def __init__(self, evaluate_task_name: str = PTConstants.EvalTaskName, project_id: str = "", query: str = ""):
        super().__init__(evaluate_task_name=evaluate_task_name, project_id=project_id, query=query)

    def algo_tasks(self) -> dict[str, Any]:
        return {self.evaluate_task_name: "evaluate"}
