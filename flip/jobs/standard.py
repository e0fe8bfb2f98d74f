"""The standard FLIP job: init training -> scatter-gather rounds -> cross-site validation -> S3."""

from __future__ import annotations

from pathlib import Path

from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.job_config.api import FedJob

from flip.constants import ComponentId, FlipTask
from flip.jobs.common import (
    DEFAULT_MODEL_ID,
    DEMO_APP_DIR,
    add_lifecycle,
    add_site_basics,
    add_training_server,
    add_training_sites,
    explicit,
    new_job,
)
from flip.nvflare.components import PercentilePrivacy, ValidationJsonGenerator
from flip.nvflare.controllers.init_training import check_positive_int


def scatter_and_gather(min_clients: int, num_rounds: int, wait_after_min_clients: int) -> ScatterAndGather:
    return explicit(
        ScatterAndGather(
            min_clients=min_clients,
            num_rounds=check_positive_int("num_rounds", num_rounds),
            wait_time_after_min_received=wait_after_min_clients,
            aggregator_id=ComponentId.AGGREGATOR,
            persistor_id=ComponentId.PERSISTOR,
            shareable_generator_id=ComponentId.SHAREABLE_GENERATOR,
            train_task_name=FlipTask.TRAIN,
        ),
        "aggregator_id", "persistor_id", "shareable_generator_id", "train_task_name",
    )


def standard_job(
    name: str = "standard",
    model_id: str = DEFAULT_MODEL_ID,
    num_rounds: int = 3,
    min_clients: int = 2,
    percentile: float = 10,
    gamma: float = 0.01,
    wait_after_min_clients: int = 60,
    app_dir: str | Path | None = None,
    shareable_generator=None,
) -> FedJob:
    """Build the standard job.

    Args:
        name: job (folder) name.
        model_id: the model's UUID (the S3 key's first part).
        num_rounds: scatter-gather rounds (>= 1). Default 3.
        min_clients: sites needed to start and in each round (>= 1). Default 2.
        percentile, gamma: the sites' PercentilePrivacy filter. Defaults 10 / 0.01 (share ~90% of each update).
        wait_after_min_clients: once min_clients sites answered a task, seconds to wait for the others (no wait
            once all answered); later answers are discarded as stale. Default 60.
        app_dir: the user's code to put in custom/ (default: the demo app).
        shareable_generator: how the averaged update becomes the global model (default: add it, FedAvg).

    Raises:
        ValueError: a bad argument (named).
    """
    job = new_job(name, model_id, min_clients, wait_after_min_clients)
    add_lifecycle(job, model_id, ValidationJsonGenerator(), min_clients=min_clients,
                  wait_after_min_clients=wait_after_min_clients)
    add_training_server(job, shareable_generator or FullModelShareableGenerator(),
                        scatter_and_gather(min_clients, num_rounds, wait_after_min_clients))
    add_training_sites(job, PercentilePrivacy(percentile=percentile, gamma=gamma))
    add_site_basics(job, app_dir or DEMO_APP_DIR)
    return job
