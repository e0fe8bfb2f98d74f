"""The evaluation-only jobs: every site evaluates the given model(s); no training.

``evaluation_job``: flip's, the models of the registry (our plain contract's ``FLIP_EVALUATOR(config)``).
``flip_evaluation_job``: FLIP's, the checkpoints a FLIP app's ``config.json`` names, kept on the server.
"""

from __future__ import annotations

from nvflare.job_config.api import FedJob

from flip.constants import ComponentId, FlipTask, JobName, PTConstants
from flip.jobs.common import DEFAULT_MODEL_ID, DEMO_APP_DIR, add_lifecycle, add_site_basics, explicit, new_job
from flip.nvflare.components import EvaluationJsonGenerator, EvaluationPTModelLocator
from flip.nvflare.controllers import EvaluateModels
from flip.nvflare.executors import RUN_EVALUATOR


def evaluation_job(
    name: str = JobName.EVALUATION,
    model_id: str = DEFAULT_MODEL_ID,
    model_ids: list[str] | None = None,
    min_clients: int = 2,
    wait_after_min_clients: int = 60,
    app_dir=None,
    evaluator=None,
) -> FedJob:
    """Build the evaluation job.

    Args:
        model_id: the run's model id: its results go to ``s3://<bucket>/<model_id>/<job_id>/``.
        model_ids: the models to evaluate (default: ``[model_id]``), each from its latest verified run in the
            registry, else its initial (safehouse) model.
        evaluator: the sites' executor of the user's evaluator on ``evaluate`` (default: ``RUN_EVALUATOR()``).

    Raises:
        ValueError: a bad argument (named).
    """
    job = new_job(name, model_id, min_clients, wait_after_min_clients)
    add_lifecycle(
        job,
        model_id,
        EvaluationJsonGenerator(),
        persistor_id="",
        min_clients=min_clients,
        wait_after_min_clients=wait_after_min_clients,
    )
    job.to_server(EvaluationPTModelLocator(), id=ComponentId.MODEL_LOCATOR)
    job.to_server(
        EvaluateModels(
            model_ids=model_ids, min_clients=min_clients, wait_time_after_min_received=wait_after_min_clients
        ),
        id="evaluate",
    )
    job.to_clients(evaluator if evaluator is not None else RUN_EVALUATOR(), tasks=[FlipTask.EVALUATE])
    add_site_basics(job, app_dir or DEMO_APP_DIR, JobName.EVALUATION)
    return job


def flip_evaluation_job(
    name: str, model_id: str, app_dir, evaluator, min_clients: int = 1, wait_after_min_clients: int = 60
) -> FedJob:
    """Build FLIP's evaluation job: ``FlipEvaluation`` loads each checkpoint of the server app's ``config.json``
    ``"models"`` into ``models.model_paths`` and sends them in one ``evaluation`` task; ``evaluator`` (FLIP's
    ``RUN_EVALUATOR`` or ``RUN_MONAI_FL_EVALUATOR``) runs the app's ``FLIP_EVALUATOR`` at each site.

    The job is exported as one app; :mod:`flip.jobs.flip_app` splits it into the server's app (with the
    checkpoints) and the sites' app (without), so the checkpoints never reach a site.

    Raises:
        ValueError: a bad argument (named).
    """
    from flip.nvflare.controllers import FlipEvaluation

    job = new_job(name, model_id, min_clients, wait_after_min_clients)
    add_lifecycle(
        job,
        model_id,
        EvaluationJsonGenerator(),
        persistor_id="",
        min_clients=min_clients,
        wait_after_min_clients=wait_after_min_clients,
    )
    job.to_server(
        explicit(
            FlipEvaluation(
                min_clients=min_clients,
                evaluate_task_name=PTConstants.EvalTaskName,
                wait_time_after_min_received=wait_after_min_clients,
            ),
            "evaluate_task_name",
        ),
        id="evaluate",
    )
    job.to_clients(evaluator, tasks=[PTConstants.EvalTaskName])
    add_site_basics(job, app_dir, JobName.EVALUATION)
    return job
