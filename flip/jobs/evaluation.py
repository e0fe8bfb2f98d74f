"""The evaluation-only job: every site evaluates the given model(s); no training."""

from __future__ import annotations

from nvflare.job_config.api import FedJob

from flip.constants import ComponentId, FlipTask, JobName
from flip.jobs.common import DEFAULT_MODEL_ID, DEMO_APP_DIR, add_lifecycle, add_site_basics, new_job
from flip.nvflare.components import EvaluationJsonGenerator, EvaluationPTModelLocator
from flip.nvflare.controllers import EvaluateModels
from flip.nvflare.executors import RUN_EVALUATOR


def evaluation_job(name: str = JobName.EVALUATION, model_id: str = DEFAULT_MODEL_ID, model_ids: list[str] | None = None,
                   min_clients: int = 2, wait_after_min_clients: int = 60, app_dir=None) -> FedJob:
    """Build the evaluation job.

    Args:
        model_id: the run's model id: its results go to ``s3://<bucket>/<model_id>/<job_id>/``.
        model_ids: the models to evaluate (default: ``[model_id]``), each from its latest verified run in the
            registry, else its initial (safehouse) model.

    Raises:
        ValueError: a bad argument (named).
    """
    job = new_job(name, model_id, min_clients, wait_after_min_clients)
    add_lifecycle(job, model_id, EvaluationJsonGenerator(), persistor_id="", min_clients=min_clients,
                  wait_after_min_clients=wait_after_min_clients)
    job.to_server(EvaluationPTModelLocator(), id=ComponentId.MODEL_LOCATOR)
    job.to_server(EvaluateModels(model_ids=model_ids, min_clients=min_clients,
                                 wait_time_after_min_received=wait_after_min_clients), id="evaluate")
    job.to_clients(RUN_EVALUATOR(), tasks=[FlipTask.EVALUATE])
    add_site_basics(job, app_dir or DEMO_APP_DIR, JobName.EVALUATION)
    return job
