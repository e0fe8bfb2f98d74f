"""The standard FLIP job: init training -> scatter-gather rounds -> cross-site validation -> S3."""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.dxo import DataKind
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import InTimeAccumulateWeightedAggregator
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from flip.constants import ComponentId, FlipTask, UserFile
from flip.nvflare.components import (
    CleanupImages,
    ClientEventHandler,
    PercentilePrivacy,
    PersistToS3AndCleanup,
    PTModelLocator,
    ServerEventHandler,
    ValidationJsonGenerator,
)
from flip.nvflare.controllers import InitTraining
from flip.nvflare.controllers.init_training import check_positive_int
from flip.nvflare.executors import RUN_TRAINER, RUN_VALIDATOR
from flip.storage.s3 import check_model_id

#: the model id of the checked-in job folders (the hub sets a real one per model)
DEFAULT_MODEL_ID = "5f2b7c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"
_APP_SUFFIXES = (".py", ".json")


def explicit(component, *args: str):
    """Have the job API write ``args`` even at their defaults (ids and task names are then visible in the job)."""
    component._always_serialize_args = args
    return component


def add_user_app(job: FedJob, app_dir: str | Path) -> None:
    """Copy the user's app (``*.py``, ``*.json``) into the job's custom/ folder."""
    app_dir = Path(app_dir)
    missing = [f for f in (UserFile.MODELS, UserFile.CONFIG) if not (app_dir / f).is_file()]
    if missing:
        raise ValueError(f"app_dir {str(app_dir)!r} lacks {', '.join(missing)}: it must hold the user's code")
    for path in sorted(app_dir.iterdir()):
        if path.is_file() and path.suffix in _APP_SUFFIXES:
            job.add_file_to_clients(str(path))


def standard_job(
    name: str = "standard",
    model_id: str = DEFAULT_MODEL_ID,
    num_rounds: int = 3,
    min_clients: int = 2,
    percentile: float = 10,
    gamma: float = 0.01,
    wait_after_min_clients: int = 60,
    app_dir: str | Path | None = None,
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

    Raises:
        ValueError: a bad argument (named).
    """
    from flip.jobs import DEMO_APP_DIR

    model_id = check_model_id(model_id)
    check_positive_int("num_rounds", num_rounds)
    check_positive_int("min_clients", min_clients)
    check_positive_int("wait_after_min_clients", wait_after_min_clients, minimum=0)
    job = FedJob(name=name, min_clients=min_clients)
    job.set_app_packages(["flip"])

    # server: components (ids written once, in ComponentId) then workflows, in order
    job.to_server(PTFileModelPersistor(model={"path": f"models.{UserFile.MODEL_FUNCTION}"}), id=ComponentId.PERSISTOR)
    job.to_server(FullModelShareableGenerator(), id=ComponentId.SHAREABLE_GENERATOR)
    job.to_server(InTimeAccumulateWeightedAggregator(expected_data_kind=DataKind.WEIGHT_DIFF), id=ComponentId.AGGREGATOR)
    job.to_server(PTModelLocator(), id=ComponentId.MODEL_LOCATOR)
    job.to_server(ValidationJsonGenerator(), id=ComponentId.JSON_GENERATOR)
    job.to_server(PersistToS3AndCleanup(model_id=model_id), id=ComponentId.PERSIST_AND_CLEANUP)
    job.to_server(ServerEventHandler(model_id=model_id), id=ComponentId.SERVER_EVENT_HANDLER)
    job.to_server(
        InitTraining(min_clients=min_clients, wait_time_after_min_received=wait_after_min_clients), id="init_training"
    )
    job.to_server(
        explicit(
            ScatterAndGather(
                min_clients=min_clients,
                num_rounds=num_rounds,
                wait_time_after_min_received=wait_after_min_clients,
                aggregator_id=ComponentId.AGGREGATOR,
                persistor_id=ComponentId.PERSISTOR,
                shareable_generator_id=ComponentId.SHAREABLE_GENERATOR,
                train_task_name=FlipTask.TRAIN,
            ),
            "aggregator_id", "persistor_id", "shareable_generator_id", "train_task_name",
        ),
        id="scatter_and_gather",
    )
    job.to_server(
        explicit(
            CrossSiteModelEval(
                model_locator_id=ComponentId.MODEL_LOCATOR,
                submit_model_task_name="",  # only the server's models are validated: local models never leave a site
                validation_task_name=FlipTask.VALIDATE,
            ),
            "validation_task_name",
        ),
        id="cross_site_validate",
    )

    # sites: executors, the privacy filter on every train result, the event handler, the user's code
    job.to_clients(RUN_TRAINER(), tasks=[FlipTask.TRAIN])
    job.to_clients(RUN_VALIDATOR(), tasks=[FlipTask.VALIDATE])
    job.to_clients(CleanupImages(), tasks=[FlipTask.INIT_TRAINING])
    job.to_clients(PercentilePrivacy(percentile=percentile, gamma=gamma), filter_type=FilterType.TASK_RESULT,
                   tasks=[FlipTask.TRAIN])
    job.to_clients(ClientEventHandler(), id=ComponentId.CLIENT_EVENT_HANDLER)
    add_user_app(job, app_dir or DEMO_APP_DIR)
    return job
