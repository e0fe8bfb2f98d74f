"""The multi-stage job: stages of scatter-gather rounds, each training its own part of the model."""

from __future__ import annotations

from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.job_config.api import FedJob

from flip.checks import check_bool
from flip.constants import JobName
from flip.jobs.common import (
    DEFAULT_MODEL_ID,
    MULTISTAGE_APP_DIR,
    add_lifecycle,
    add_site_basics,
    add_training_server,
    add_training_sites,
    check_keep_best,
    explicit,
    new_job,
)
from flip.nvflare.components import SampleWeightedAggregator, StagePercentilePrivacy, ValidationJsonGenerator
from flip.nvflare.controllers import MultiStageScatterAndGather

DEFAULT_STAGES = [{"name": "denoise", "num_rounds": 2}, {"name": "classify", "num_rounds": 2}]


def multi_stage_job(
    name: str = JobName.MULTI_STAGE,
    model_id: str = DEFAULT_MODEL_ID,
    stages: list[dict] | None = None,
    min_clients: int = 2,
    percentile: float = 10,
    gamma: float = 0.01,
    wait_after_min_clients: int = 60,
    app_dir=None,
    trainers: list[tuple[object, list[str]]] | None = None,
    validator=None,
    model_test_after_each_round: bool = True,
    initial_model: str | None = None,
    keep_round_models: bool = False,
    keep_best: str | None = None,
    keep_best_mode: str = "max",
) -> FedJob:
    """Build the multi-stage job (default: the two-stage demo, 2 rounds "denoise" then 2 rounds "classify").

    Args:
        stages: ``[{"name": str, "num_rounds": int >= 1[, "train_task_name": str]}, ...]`` in order (a stage's
            own train task name: FLIP's diffusion apps train ``train_ae`` then ``train_dm``).
        trainers, validator: the sites' executors of the user's trainer(s), each with its training tasks, and of
            the validator (default: our ``RUN_TRAINER()`` on ``train``, ``RUN_VALIDATOR()``).
        model_test_after_each_round, initial_model, keep_round_models, keep_best, keep_best_mode: as
            :func:`flip.jobs.standard.standard_job` (per-round tests on by default, as in DLR).

    Raises:
        ValueError: a bad argument (named), e.g. a stage without rounds.
    """
    job = new_job(name, model_id, min_clients, wait_after_min_clients)
    add_lifecycle(
        job, model_id, ValidationJsonGenerator(), min_clients=min_clients, wait_after_min_clients=wait_after_min_clients
    )
    check_bool("model_test_after_each_round", model_test_after_each_round)
    check_keep_best(keep_best, model_test_after_each_round, False)
    workflow = explicit(
        MultiStageScatterAndGather(
            stages=stages or DEFAULT_STAGES,
            min_clients=min_clients,
            wait_time_after_min_received=wait_after_min_clients,
            model_test_after_each_round=model_test_after_each_round,
        ),
        "stages",
    )
    aggregator = explicit(SampleWeightedAggregator(min_accepted=min_clients), "min_accepted")
    add_training_server(
        job,
        FullModelShareableGenerator(),
        workflow,
        aggregator,
        initial_model=initial_model,
        keep_round_models=keep_round_models,
        keep_best=keep_best,
        keep_best_mode=keep_best_mode,
    )
    add_training_sites(
        job, StagePercentilePrivacy(percentile=percentile, gamma=gamma), trainers=trainers, validator=validator
    )
    add_site_basics(job, app_dir or MULTISTAGE_APP_DIR, JobName.MULTI_STAGE)
    return job
