"""Pieces every FLIP job shares, so each job module says only what is its own."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from nvflare.app_common.workflows.cross_site_model_eval import CrossSiteModelEval
from nvflare.job_config.api import FedJob
from nvflare.job_config.defs import FilterType

from flip.checks import check_bool, check_choice, check_model_id, check_path_name, check_positive_int, check_str
from flip.constants import ComponentId, FlipTask, JobName, UserFile
from flip.nvflare.components import (
    CleanupImages,
    ClientEventHandler,
    FlipModelPersistor,
    FlipModelSelector,
    InitialPTModelLocator,
    PersistToS3AndCleanup,
    PTModelLocator,
    SampleWeightedAggregator,
    ServerEventHandler,
)
from flip.nvflare.controllers import InitTraining
from flip.nvflare.executors import RUN_TRAINER, RUN_VALIDATOR
from flip.storage.registry import parse_model_ref

#: how --keep-best compares its metric: higher is better (accuracy), or lower (a loss)
BEST_MODES = ("max", "min")

#: the model id of the checked-in job folders (the hub sets a real one per model)
DEFAULT_MODEL_ID = "5f2b7c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f"
DEMO_APP_DIR = Path(__file__).resolve().parent.parent / "demo" / "app"
MULTISTAGE_APP_DIR = Path(__file__).resolve().parent.parent / "demo" / "multistage"
#: modules an app shares with another app folder (one copy each): the multi-stage demo's app uses the demo app's
#: digits data reader; the job builder copies them into the job's custom/ folder with the app's own files
SHARED_APP_FILES = {MULTISTAGE_APP_DIR: (DEMO_APP_DIR / "digits_data.py",)}
_APP_SUFFIXES = (".py", ".json")
#: the user's entry files a job type never runs: left out of its custom/ folder unless another file of the app
#: imports them (helper modules are always copied). The fed_opt job is a standard job.
UNUSED_ENTRY_FILES = {
    JobName.STANDARD: (UserFile.EVALUATOR,),
    JobName.MULTI_STAGE: (UserFile.EVALUATOR,),
    JobName.EVALUATION: (UserFile.TRAINER, UserFile.VALIDATOR),
}


def explicit(component, *args: str):
    """Have the job API write ``args`` even at their defaults (ids and task names are then visible in the job)."""
    component._always_serialize_args = args
    return component


#: seconds a site waits before asking again when the server has no task for it (NVFlare's default: 2). Every run has
#: such gaps (after InitTraining, between rounds, before cross-site validation); a poll is a few hundred bytes.
TASK_REQUEST_INTERVAL = 0.5


class ServerSettings:
    """The server app's own settings (``"server": {...}`` in config_fed_server.json), added with ``job.to_server``."""

    def __init__(self, task_request_interval: float = TASK_REQUEST_INTERVAL):
        self.task_request_interval = task_request_interval

    def add_to_fed_job(self, job: FedJob, ctx) -> None:
        job.add_params({"server": {"task_request_interval": self.task_request_interval}}, ctx)


def new_job(name: str, model_id: str, min_clients: int, wait_after_min_clients: int) -> FedJob:
    """A job with the checks every job makes on its arguments."""
    check_path_name("job name", name)
    check_model_id(model_id)
    check_positive_int("min_clients", min_clients)
    check_positive_int("wait_after_min_clients", wait_after_min_clients, minimum=0)
    job = FedJob(name=name, min_clients=min_clients)
    job.set_app_packages(["flip"])
    job.to_server(ServerSettings())
    return job


def add_lifecycle(
    job: FedJob,
    model_id: str,
    json_generator,
    persistor_id: str = ComponentId.PERSISTOR,
    min_clients: int = 1,
    wait_after_min_clients: int = 60,
) -> None:
    """Server: results JSON, persist-and-cleanup and the event handler; the InitTraining workflow first."""
    job.to_server(json_generator, id=ComponentId.JSON_GENERATOR)
    job.to_server(
        PersistToS3AndCleanup(model_id=check_model_id(model_id), persistor_id=persistor_id),
        id=ComponentId.PERSIST_AND_CLEANUP,
    )
    job.to_server(ServerEventHandler(model_id=check_model_id(model_id)), id=ComponentId.SERVER_EVENT_HANDLER)
    job.to_server(
        InitTraining(min_clients=min_clients, wait_time_after_min_received=wait_after_min_clients), id="init_training"
    )


def check_model_options(
    initial_model: str | None, keep_round_models: bool, keep_best: str | None, keep_best_mode: str
) -> None:
    """Check the options every training job takes about its models (each named in its error)."""
    if initial_model is not None:
        parse_model_ref(initial_model, "initial_model")
    check_bool("keep_round_models", keep_round_models)
    if keep_best is not None:
        check_str("keep_best", keep_best, max_length=128)
    check_choice("keep_best_mode", keep_best_mode, BEST_MODES)


def check_keep_best(keep_best: str | None, model_test_after_each_round: bool, skip_model_tests: bool) -> None:
    """The best model is chosen on the per-round tests: keep_best needs them."""
    if keep_best is not None and (skip_model_tests or not model_test_after_each_round):
        raise ValueError(
            f"keep_best={keep_best!r} selects on the per-round tests of the global model: it needs "
            "model_test_after_each_round=True and skip_model_tests=False"
        )


def add_training_server(
    job: FedJob,
    shareable_generator,
    training_workflow,
    aggregator=None,
    after_training: list | None = None,
    model_tests: bool = True,
    initial_model: str | None = None,
    keep_round_models: bool = False,
    keep_best: str | None = None,
    keep_best_mode: str = "max",
) -> None:
    """Server: the model a run starts from (InitialPTModelLocator: the registry model ``initial_model``, else the
    platform's initial model, else models.get_model()) in the persistor, averaging, the training workflow (and what
    follows it, e.g. the SWAG round), then cross-site validation of the server's model(s) (task ``validate``) unless
    ``model_tests`` is off; every round's global model kept with ``keep_round_models``; the best global model on the
    per-round tests' metric ``keep_best`` (``keep_best_mode`` max or min) with NVFlare's model selector."""
    check_model_options(initial_model, keep_round_models, keep_best, keep_best_mode)
    job.to_server(InitialPTModelLocator(registry_model=initial_model), id=ComponentId.INITIAL_MODEL_LOCATOR)
    job.to_server(
        explicit(
            FlipModelPersistor(
                model={"path": f"models.{UserFile.MODEL_FUNCTION}"}, keep_round_models=keep_round_models
            ),
            "initial_model_locator_id",
        ),
        id=ComponentId.PERSISTOR,
    )
    if shareable_generator is not None:
        job.to_server(shareable_generator, id=ComponentId.SHAREABLE_GENERATOR)
    job.to_server(aggregator or SampleWeightedAggregator(), id=ComponentId.AGGREGATOR)
    job.to_server(PTModelLocator(), id=ComponentId.MODEL_LOCATOR)
    if keep_best is not None:
        job.to_server(
            explicit(FlipModelSelector(key_metric=keep_best, negate_key_metric=keep_best_mode == "min"), "key_metric"),
            id=ComponentId.MODEL_SELECTOR,
        )
    job.to_server(training_workflow, id="training")
    for workflow, workflow_id in after_training or []:
        job.to_server(workflow, id=workflow_id)
    if not model_tests:
        return
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


def add_training_sites(
    job: FedJob,
    privacy_filter,
    swag: bool = False,
    dp_filter=None,
    trainers: list[tuple[Any, list[str]]] | None = None,
    validator=None,
) -> None:
    """Sites: train and validate the user's code; the privacy filter(s) on every training (and SWAG) task's
    result, the differential-privacy filter last (noise is the last thing applied).

    Args:
        trainers: the executors running the user's trainer, each with its training tasks (default: our
            ``RUN_TRAINER()`` on ``train``, and ``swag`` if ``swag``); a FLIP app's job names FLIP's executors.
        validator: the executor running the user's validator on ``validate`` (default: ``RUN_VALIDATOR()``).
    """
    if trainers is None:
        trainers = [(RUN_TRAINER(), [FlipTask.TRAIN, FlipTask.SWAG] if swag else [FlipTask.TRAIN])]
    tasks = [task for _, trainer_tasks in trainers for task in trainer_tasks]
    for trainer, trainer_tasks in trainers:
        job.to_clients(trainer, tasks=list(trainer_tasks))
    job.to_clients(validator if validator is not None else RUN_VALIDATOR(), tasks=[FlipTask.VALIDATE])
    job.to_clients(privacy_filter, filter_type=FilterType.TASK_RESULT, tasks=tasks)
    if dp_filter is not None:
        job.to_clients(dp_filter, filter_type=FilterType.TASK_RESULT, tasks=tasks)


def add_site_basics(job: FedJob, app_dir: str | Path, job_type: str) -> None:
    """Sites: image cleanup, the event handler, and the user's code a job of ``job_type`` runs in custom/."""
    job.to_clients(CleanupImages(), tasks=[FlipTask.INIT_TRAINING])
    job.to_clients(ClientEventHandler(), id=ComponentId.CLIENT_EVENT_HANDLER)
    add_user_app(job, app_dir, job_type)


def add_user_app(job: FedJob, app_dir: str | Path, job_type: str | None = None) -> None:
    """Copy the user's app (``*.py``, ``*.json``) into the job's custom/ folder, with the modules it shares with
    another app folder (SHARED_APP_FILES), so the job folder is self-contained; leave out the entry files a job of
    ``job_type`` never runs (UNUSED_ENTRY_FILES; None: leave out nothing)."""
    app_dir = Path(app_dir)
    missing = [f for f in (UserFile.MODELS, UserFile.CONFIG) if not (app_dir / f).is_file()]
    if missing:
        raise ValueError(f"app_dir {str(app_dir)!r} lacks {', '.join(missing)}: it must hold the user's code")
    files = [p for p in app_dir.iterdir() if p.is_file() and p.suffix in _APP_SUFFIXES]
    own = {p.name for p in files}
    files += [p for p in SHARED_APP_FILES.get(app_dir.resolve(), ()) if p.name not in own]
    files = _without_unused(files, UNUSED_ENTRY_FILES.get(job_type, ()))
    for path in sorted(files, key=lambda p: p.name):
        job.add_file_to_clients(str(path))


def _without_unused(files: list[Path], unused: tuple[str, ...]) -> list[Path]:
    """``files`` without those named in ``unused``, except one that a kept Python file imports (transitively)."""
    kept = [p for p in files if p.name not in unused]
    left_out = {p.stem: p for p in files if p.name in unused}
    pending = [p for p in kept if p.suffix == ".py"]
    while pending and left_out:
        imported = _imported_modules(pending.pop())
        if imported is None:  # a file we cannot parse: keep everything it might need
            return files
        for stem in imported & left_out.keys():
            needed = left_out.pop(stem)
            kept.append(needed)
            pending.append(needed)
    return kept


def _imported_modules(path: Path) -> set[str] | None:
    """The top-level module names ``path`` imports (absolute imports only), or None if it is not valid Python."""
    try:
        tree = ast.parse(path.read_text(), filename=path.name)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names
