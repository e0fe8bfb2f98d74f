"""FLIP's app bundling (``flip job create``): a submit-able job folder from a researcher's app folder.

An app folder written for FLIP (``trainer.py``, ``validator.py``, ``models.py``, ``config.json``; for an evaluation
``evaluator.py``, ``models.py`` with ``model_paths`` and the checkpoints ``config.json`` names) and one of FLIP's
job types (``standard``, ``evaluation``, ``fed_opt``, ``diffusion_model``; our ``multi_stage`` is FLIP's
``diffusion_model``) give one of our jobs, with every guarantee of ours: the sites' privacy filter, the
aggregator's update checks, metrics, the status lifecycle, verified S3 persistence and the report.

Nothing of the app is imported or run here. Each entry file's contract is read from its source with ``ast``:
a class ``FLIP_TRAINER`` (``FLIP_VALIDATOR``, ``FLIP_EVALUATOR``) whose bases name ``ClientAlgo`` (directly, or
through a class of the app) is MONAI FL's contract (``RUN_MONAI_FL_*``); one whose bases name ``Executor`` is
FLIP's Executor contract (``RUN_*`` given ``project_id`` and ``query``); any other is our plain contract
(``FLIP_TRAINER(config).train(model, ctx)``, ``RUN_*``).

Rounds are FLIP's: ``--rounds``, else ``GLOBAL_ROUNDS`` of ``config.json`` (a diffusion app's stages
``GLOBAL_ROUNDS_AE`` / ``GLOBAL_ROUNDS_DM``), else 1. ``LOCAL_ROUNDS`` stays the app's: the job's ``config.json``
gets ``LOCAL_ROUNDS: 1`` only if the app has none (FLIP's bundler does the same) and the rounds the job runs.
"""

from __future__ import annotations

import ast
import json
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from nvflare.job_config.api import FedJob

from flip.checks import check_choice, check_model_id, check_path_name, check_positive_int, check_str, is_int
from flip.constants import JOB_TYPE_CHOICES, Aggregation, FlipTask, JobName, JobType, PTConstants, Uncertainty, UserFile
from flip.errors import AppError

#: FLIP's job types (``flip job create --job-type`` also takes ours, ``multi_stage``, for FLIP's diffusion_model)
JOB_TYPES = tuple(t.value for t in JobType)
_ALIASES = {JobName.MULTI_STAGE: JobType.DIFFUSION.value}

_TRAINING_FILES = (UserFile.TRAINER, UserFile.VALIDATOR, UserFile.CONFIG, UserFile.MODELS)
#: the files an app of each job type must have (FLIP's required_files.json; an evaluation also needs models.py)
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    JobType.STANDARD: _TRAINING_FILES,
    JobType.FED_OPT: _TRAINING_FILES,
    JobType.DIFFUSION: _TRAINING_FILES,
    JobType.EVALUATION: (UserFile.CONFIG, UserFile.EVALUATOR, UserFile.MODELS),
}
#: the entry files of each job type and the class each must define
ENTRY_CLASSES: dict[str, tuple[tuple[str, str], ...]] = {
    **{
        t: ((UserFile.TRAINER, UserFile.TRAINER_CLASS), (UserFile.VALIDATOR, UserFile.VALIDATOR_CLASS))
        for t in (JobType.STANDARD, JobType.FED_OPT, JobType.DIFFUSION)
    },
    JobType.EVALUATION: ((UserFile.EVALUATOR, UserFile.EVALUATOR_CLASS),),
}
#: FLIP's diffusion stages: (stage name, train task, config.json key of its rounds)
DIFFUSION_STAGES = (("ae", "train_ae", "GLOBAL_ROUNDS_AE"), ("dm", "train_dm", "GLOBAL_ROUNDS_DM"))
GLOBAL_ROUNDS, LOCAL_ROUNDS, JOB_TYPE_KEY, MODELS_KEY = "GLOBAL_ROUNDS", "LOCAL_ROUNDS", "job_type", "models"
#: config.json keys FLIP's FL API reads that these jobs do not: named in a note when an app sets them
_FLIP_API_KEYS = ("IGNORE_RESULT_ERROR", "AGGREGATOR", "AGGREGATION_WEIGHTS")
#: options of ours that change the local training inside our plain contract's RUN_TRAINER: a FLIP trainer trains
#: its own model in its own loop, so these need the plain contract
PLAIN_ONLY_OPTIONS = {"aggregation": (Aggregation.FEDPROX,), "uncertainty": (Uncertainty.SWAG,)}
#: how many sites an evaluation job's site app is deployed to when none are named (as ``flip simulate``)
DEFAULT_EVALUATION_SITES = 2


class Contract(StrEnum):
    """How an entry class of an app is called."""

    PLAIN = "plain"  #: ours: FLIP_TRAINER(config).train(model, ctx), no nvflare import
    EXECUTOR = "executor"  #: FLIP's: an nvflare Executor, execute(task_name, shareable, fl_ctx, abort_signal)
    CLIENT_ALGO = "client_algo"  #: MONAI FL's ClientAlgo: initialize, train, get_weights, evaluate

    @property
    def described(self) -> str:
        return {
            Contract.PLAIN: "flip's plain contract (FLIP_*(config))",
            Contract.EXECUTOR: "FLIP's Executor contract",
            Contract.CLIENT_ALGO: "MONAI FL's ClientAlgo",
        }[self]


_CONTRACT_BASES = {"ClientAlgo": Contract.CLIENT_ALGO, "Executor": Contract.EXECUTOR}
#: (role, contract) -> the executor class in flip.nvflare.executors and its task-name argument
_EXECUTORS = {
    ("train", Contract.PLAIN): ("RUN_TRAINER", None),
    ("train", Contract.EXECUTOR): ("RUN_TRAINER", "train_task_name"),
    ("train", Contract.CLIENT_ALGO): ("RUN_MONAI_FL_TRAINER", "train_task_name"),
    ("validate", Contract.PLAIN): ("RUN_VALIDATOR", None),
    ("validate", Contract.EXECUTOR): ("RUN_VALIDATOR", "validate_task_name"),
    ("validate", Contract.CLIENT_ALGO): ("RUN_MONAI_FL_VALIDATOR", "validate_task_name"),
    ("evaluate", Contract.PLAIN): ("RUN_EVALUATOR", "evaluate_task_name"),
    ("evaluate", Contract.EXECUTOR): ("RUN_EVALUATOR", "evaluate_task_name"),
    ("evaluate", Contract.CLIENT_ALGO): ("RUN_MONAI_FL_EVALUATOR", "evaluate_task_name"),
}


def job_type_name(value: Any) -> str:
    """Return FLIP's name of job type ``value`` (``multi_stage`` -> ``diffusion_model``).

    Raises:
        ValueError: not one of :data:`JOB_TYPE_CHOICES` (named).
    """
    check_choice("job type", value, JOB_TYPE_CHOICES)
    return _ALIASES.get(value, value)


# -- reading the app ------------------------------------------------------------------------------------------
def read_config(app_dir: Path) -> dict[str, Any]:
    """Return the app's ``config.json`` (a JSON object).

    Raises:
        AppError: not valid JSON (with the line) or not an object.
    """
    path = Path(app_dir) / UserFile.CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise AppError(
            f"{UserFile.CONFIG} is not valid JSON (line {getattr(exc, 'lineno', '?')}): expected a JSON object"
        ) from exc
    if not isinstance(config, dict):
        raise AppError(f"{UserFile.CONFIG} holds a JSON {type(config).__name__}: expected a JSON object")
    return config


def config_rounds(config: dict[str, Any], key: str) -> int | None:
    """Return ``config[key]`` (an integer >= 1), or None if the app does not set it.

    Raises:
        AppError: set but not an integer >= 1 (named).
    """
    if key not in config:
        return None
    value = config[key]
    if not (is_int(value) and value >= 1):
        raise AppError(f"{UserFile.CONFIG} {key} must be an integer >= 1, got {value!r}")
    return int(value)


def _parse(app_dir: Path, module: str) -> ast.Module | None:
    """The syntax tree of ``app_dir/<module>.py`` (None if the app has no such file).

    Raises:
        AppError: the file is not valid Python (names the file and the line).
    """
    path = app_dir / f"{module}.py"
    if not module.isidentifier() or not path.is_file():
        return None
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=path.name)
    except SyntaxError as exc:
        raise AppError(f"{path.name} is not valid Python: SyntaxError at line {exc.lineno}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise AppError(f"{path.name} cannot be read as Python source: {type(exc).__name__}") from exc


def _binds(node: ast.stmt, name: str) -> bool:
    """True if statement ``node`` (a class, function or assignment) binds ``name``."""
    if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    return isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name


def _binding(tree: ast.Module, name: str) -> ast.AST | tuple[ast.ImportFrom, ast.alias] | None:
    """The last top-level statement that binds ``name`` (a class, function, assignment or import), or None."""
    found = None
    for node in tree.body:
        if _binds(node, name):
            found = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    found = (node, alias)
    return found


def _base_name(node: ast.expr) -> str | None:
    """``Executor`` for ``Executor``, ``nvflare.apis.executor.Executor`` or ``Generic[Executor]``'s value."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _base_name(node.value)
    return None


def _contract_of(app_dir: Path, module: str, name: str, seen: set[tuple[str, str]]) -> Contract | None:
    """The contract of class ``name`` of the app's ``module``, following its bases through the app's modules;
    None if no class of that name can be read (not bound, or bound to something that is not a class)."""
    if (module, name) in seen:
        return None
    seen.add((module, name))
    tree = _parse(app_dir, module)
    binding = _binding(tree, name) if tree is not None else None
    if isinstance(binding, ast.ClassDef):
        for base in binding.bases:
            base_name = _base_name(base)
            if base_name in _CONTRACT_BASES:
                return _CONTRACT_BASES[base_name]
            inner = _contract_of(app_dir, module, base_name, seen) if base_name else None
            if inner in (Contract.EXECUTOR, Contract.CLIENT_ALGO):
                return inner
        return Contract.PLAIN
    if isinstance(binding, tuple):  # imported: from another module of the app, or the contract's base itself
        node, alias = binding
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if (app_dir / f"{node.module}.py").is_file():
                return _contract_of(app_dir, node.module, alias.name, seen)
            return _CONTRACT_BASES.get(alias.name)
        return None
    if isinstance(binding, ast.Assign) and isinstance(binding.value, ast.Name):
        return _contract_of(app_dir, module, binding.value.id, seen)
    return None


def detect_contract(app_dir: str | Path, file_name: str, class_name: str) -> Contract | None:
    """Return the contract of class ``class_name`` in the app's ``file_name`` (read with ``ast``, never run), or
    None if the file defines no class of that name that can be read (e.g. one made at run time).

    Raises:
        AppError: a file read is not valid Python (names the file and the line).
    """
    return _contract_of(Path(app_dir), Path(file_name).stem, class_name, set())


def _defines(app_dir: Path, file_name: str, name: str) -> ast.AST | tuple | None:
    tree = _parse(app_dir, Path(file_name).stem)
    return _binding(tree, name) if tree is not None else None


def _model_paths_keys(binding: Any) -> set[str] | None:
    """The keys of ``model_paths = {"unet": ...}`` when it is a dict literal with string keys, else None."""
    value = binding.value if isinstance(binding, (ast.Assign, ast.AnnAssign)) else None
    if isinstance(value, ast.Dict) and all(
        isinstance(k, ast.Constant) and isinstance(k.value, str) for k in value.keys
    ):
        return {k.value for k in value.keys}
    return None


@dataclass(frozen=True)
class EvaluatedModel:
    """One entry of an evaluation app's ``config.json`` ``"models"``: ``{name: {"checkpoint", "path"}}``."""

    name: str
    checkpoint: str
    path: str


def evaluated_models(config: dict[str, Any]) -> list[EvaluatedModel]:
    """Return the models a FLIP evaluation app's ``config.json`` names (``"models"``), checked.

    Raises:
        AppError: ``"models"`` missing, empty or not ``{name: {"checkpoint": file name, "path": key}}`` (the
            first bad entry named; a checkpoint must be a file name in the app folder, not a path).
    """
    models = config.get(MODELS_KEY)
    expected = '{"<name>": {"checkpoint": "<file in the app folder>", "path": "<key of models.model_paths>"}}'
    if not isinstance(models, dict) or not models:
        raise AppError(
            f'{UserFile.CONFIG} must have "{MODELS_KEY}": {expected} for an evaluation, got '
            f"{type(models).__name__ if models is not None else 'none'}"
        )
    found = []
    for name, entry in models.items():
        where = f"{UserFile.CONFIG} {MODELS_KEY}[{name!r}]"
        try:
            check_path_name("model name", name)
        except ValueError as exc:
            raise AppError(f"{where}: {exc}") from None
        if not isinstance(entry, dict) or sorted(entry) != ["checkpoint", "path"]:
            raise AppError(
                f"{where} must be an object with exactly the keys ['checkpoint', 'path'], got "
                f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__}"
            )
        try:
            checkpoint = check_path_name("checkpoint", entry["checkpoint"])
            path = check_str("path", entry["path"], max_length=256)
        except ValueError as exc:
            raise AppError(f"{where}: {exc} (the checkpoint is a file name in the app folder)") from None
        found.append(EvaluatedModel(name, checkpoint, path))
    return found


@dataclass
class FlipApp:
    """An app folder read for one job type: its config, the contract of each entry file, and notes for the user.

    Attributes:
        app_dir: the app folder (absolute).
        job_type: FLIP's job type name.
        config: the app's config.json.
        contracts: entry file -> its contract.
        models: an evaluation's models (FLIP's evaluation; empty otherwise).
        notes: what the user should know (printed by ``flip job create``).
    """

    app_dir: Path
    job_type: str
    config: dict[str, Any]
    contracts: dict[str, Contract] = field(default_factory=dict)
    models: list[EvaluatedModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_flip_contract(self) -> bool:
        """True if any entry file is written to FLIP's or MONAI FL's contract."""
        return any(c != Contract.PLAIN for c in self.contracts.values())

    def contract(self, file_name: str) -> Contract:
        return self.contracts[file_name]


def inspect_app(app_dir: str | Path, job_type: str | None = None) -> FlipApp:
    """Read ``app_dir`` for job type ``job_type`` (default: ``config.json``'s ``"job_type"``), checking it.

    Raises:
        AppError: the folder is missing; a required file is missing (every missing one named); a file links to
            outside the folder; config.json is not a JSON object; a rounds key is not an integer >= 1; models.py
            lacks ``get_model`` (training) or ``model_paths`` (FLIP evaluation); an entry file is not valid Python.
            (A ``job_type`` that config.json declares and ``job_type`` overrides is a note, not an error: FLIP's
            standard apps also run as fed_opt.)
        ValueError: an unknown job type (named).
    """
    app_dir = Path(app_dir).expanduser().resolve()
    if not app_dir.is_dir():
        raise AppError(f"the app folder {app_dir} is not a folder")
    config = read_config(app_dir) if (app_dir / UserFile.CONFIG).is_file() else None
    declared = config.get(JOB_TYPE_KEY) if config else None
    if job_type is None:
        if declared is None:
            raise AppError(
                f'give --job-type (one of {list(JOB_TYPE_CHOICES)}): {app_dir} has no config.json with "{JOB_TYPE_KEY}"'
            )
        job_type = declared
    job_type = job_type_name(job_type)
    required = REQUIRED_FILES[job_type]
    missing = [f for f in required if not (app_dir / f).is_file()]
    if missing:
        raise AppError(f"{app_dir} lacks {', '.join(missing)}: a job of type {job_type} needs {', '.join(required)}")
    outside = [
        p.name
        for p in app_dir.iterdir()
        if p.is_symlink() and not p.is_dir() and not p.resolve().is_relative_to(app_dir)
    ]
    if outside:
        raise AppError(
            f"{', '.join(sorted(outside))} in {app_dir} link(s) to outside the app folder: a job carries "
            "the app's own files only (copy the file into the folder)"
        )
    app = FlipApp(app_dir, job_type, config)
    if declared is not None and job_type_name_or_none(declared) != job_type:
        app.notes.append(
            f'--job-type {job_type} is used, not {UserFile.CONFIG}\'s "{JOB_TYPE_KEY}": {declared!r} '
            "(the job's copy of config.json says the job type it is)"
        )
    for file_name, class_name in ENTRY_CLASSES[job_type]:
        contract = detect_contract(app_dir, file_name, class_name)
        if contract is None:
            app.notes.append(
                f"{file_name}: no class {class_name} found in its source (it may be made at run "
                f"time); flip's plain contract is assumed, and the run fails naming {class_name} if "
                "the module has none"
            )
            contract = Contract.PLAIN
        app.contracts[file_name] = contract
    for key in (GLOBAL_ROUNDS, LOCAL_ROUNDS, *(key for _, _, key in DIFFUSION_STAGES)):
        config_rounds(config, key)
    if job_type == JobType.EVALUATION and app.contract(UserFile.EVALUATOR) != Contract.PLAIN:
        _check_flip_evaluation(app)
    elif _defines(app_dir, UserFile.MODELS, UserFile.MODEL_FUNCTION) is None:
        raise AppError(
            f"{UserFile.MODELS} defines no {UserFile.MODEL_FUNCTION}(): the server builds the initial "
            f"global model with models.{UserFile.MODEL_FUNCTION}()"
        )
    for key in _FLIP_API_KEYS:
        if key in config:
            app.notes.append(
                f"{UserFile.CONFIG} {key} is a setting of FLIP's FL API: not used here (see the "
                "README, aggregation methods)"
            )
    return app


def job_type_name_or_none(value: Any) -> str | None:
    """FLIP's name of job type ``value``, or None if it is not one."""
    return _ALIASES.get(value, value) if value in JOB_TYPE_CHOICES else None


def _check_flip_evaluation(app: FlipApp) -> None:
    """A FLIP evaluation: config.json ``"models"``, each checkpoint in the folder, ``models.model_paths``."""
    app.models = evaluated_models(app.config)
    missing = [m.checkpoint for m in app.models if not (app.app_dir / m.checkpoint).is_file()]
    if missing:
        raise AppError(
            f"{app.app_dir} lacks {', '.join(sorted(set(missing)))}: the checkpoint(s) "
            f'{UserFile.CONFIG} "{MODELS_KEY}" names'
        )
    binding = _defines(app.app_dir, UserFile.MODELS, "model_paths")
    if binding is None:
        raise AppError(
            f"{UserFile.MODELS} defines no model_paths: an evaluation loads each checkpoint into "
            "models.model_paths[<path>] (a dict of torch modules)"
        )
    keys = _model_paths_keys(binding)
    unknown = sorted({m.path for m in app.models} - keys) if keys is not None else []
    if unknown:
        raise AppError(
            f'{UserFile.CONFIG} "{MODELS_KEY}" names path(s) {unknown} that models.model_paths lacks '
            f"(it has {sorted(keys)})"
        )


# -- building the job -----------------------------------------------------------------------------------------
def _executor(role: str, contract: Contract, task: str, project_id: str, query: str):
    """The site executor of ``role`` for ``contract``, serving ``task`` (FLIP's contracts get the project)."""
    from flip.jobs.common import explicit
    from flip.nvflare import executors

    class_name, task_arg = _EXECUTORS[(role, contract)]
    cls = getattr(executors, class_name)
    if contract == Contract.PLAIN:
        return cls() if task_arg is None else explicit(cls(**{task_arg: task}), task_arg)
    return explicit(cls(**{task_arg: task}, project_id=project_id, query=query), task_arg, "project_id", "query")


@dataclass
class JobPlan:
    """What ``flip job create`` builds: shown to the user, and what the job's files get.

    Attributes:
        app: the app as read.
        name: the job's name.
        model_id: the model's id (S3 key, hub).
        project_id, query: FLIP's project and cohort query, given to the executors of FLIP's contracts.
        min_clients: sites needed.
        rounds: training rounds (None for an evaluation); stages: a multi-stage job's stages.
        rounds_source: where the rounds came from.
        sites: the sites an evaluation's site app is deployed to (FLIP evaluation only).
        participants: the only sites a job runs at, each needed (FLIP's trusts, as its FL API gives them); empty:
            every site.
        config_updates: keys written into the job's config.json.
    """

    app: FlipApp
    name: str
    model_id: str
    project_id: str
    query: str
    min_clients: int
    rounds: int | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    rounds_source: str = ""
    sites: list[str] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    config_updates: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> list[str]:
        """Lines telling the user what the job is."""
        app = self.app
        lines = [f"job type {app.job_type}, model id {self.model_id}, min clients {self.min_clients}"]
        for file_name, contract in app.contracts.items():
            role = {UserFile.TRAINER: "train", UserFile.VALIDATOR: "validate"}.get(file_name, "evaluate")
            lines.append(f"{file_name}: {contract.described} -> {_EXECUTORS[(role, contract)][0]}")
        if self.stages:
            lines.append(
                "stages: "
                + ", ".join(f"{s['name']} {s['num_rounds']} round(s)" for s in self.stages)
                + f" ({self.rounds_source})"
            )
        elif self.rounds is not None:
            lines.append(f"rounds: {self.rounds} ({self.rounds_source})")
        if app.models:
            lines.append(
                "models evaluated: "
                + ", ".join(
                    f"{m.name} ({m.checkpoint} into model_paths[{m.path!r}], kept on the server)" for m in app.models
                )
            )
            lines.append(f"site app deployed to {', '.join(self.sites)}")
        elif self.participants:
            lines.append(f"deployed to {', '.join(self.participants)} only, each needed")
        if app.is_flip_contract:
            lines.append(f"project id {self.project_id!r}, query {self.query!r}")
        return lines + [f"note: {n}" for n in app.notes]


def _rounds(config: dict, rounds: int | None, keys: tuple[str, ...]) -> tuple[int, str]:
    """``rounds`` if given, else the first of ``keys`` config.json sets, else 1; and where it came from."""
    if rounds is not None:
        return check_positive_int("rounds", rounds), "--rounds"
    for key in keys:
        value = config_rounds(config, key)
        if value is not None:
            return value, f"{UserFile.CONFIG} {key}"
    return 1, f"default 1: {UserFile.CONFIG} has no {' or '.join(keys)}"


def _stage_names(app: FlipApp) -> list[str]:
    """The stages of a plain-contract multi-stage app: the keys of ``models.STAGES`` (a dict literal), in order."""
    binding = _defines(app.app_dir, UserFile.MODELS, "STAGES")
    value = binding.value if isinstance(binding, (ast.Assign, ast.AnnAssign)) else None
    keys = [k.value for k in value.keys if isinstance(k, ast.Constant)] if isinstance(value, ast.Dict) else []
    if not keys or not all(isinstance(k, str) for k in keys) or len(keys) != len(value.keys):
        raise AppError(
            f'{UserFile.MODELS} must define STAGES = {{"<stage>": [<parameter name prefixes>], ...}} '
            "as a dict literal for a multi-stage job of flip's plain contract (its keys are the stages, "
            "in order)"
        )
    return keys


def plan_job(
    app_dir: str | Path,
    job_type: str | None = None,
    *,
    name: str = "flip_app",
    model_id: str | None = None,
    project_id: str = "",
    query: str = "",
    min_clients: int = 1,
    rounds: int | None = None,
    sites: int | list[str] | None = None,
    participants: list[str] | None = None,
    local_rounds: int | None = None,
    **options: Any,
) -> JobPlan:
    """Read and check the app and the arguments; return what the job will be (nothing is written).

    Args:
        app_dir: the app folder.
        job_type: FLIP's job type or ``multi_stage`` (default: config.json's ``"job_type"``).
        name: the job's name (a path component).
        model_id: the model's UUID (default: a new one).
        project_id, query: FLIP's project id and cohort query (the executors of FLIP's contracts pass them on).
        min_clients: sites needed to start and in each round (>= 1). Default 1, FLIP's.
        rounds: training rounds (default: config.json's, see the module).
        sites: a FLIP evaluation's sites (a number N: site-1..site-N, or names). Default 2.
        participants: the sites the job runs at, every one of them needed (FLIP's trusts, which its FL API makes
            the job's ``deploy_map`` and ``mandatory_clients``); a FLIP evaluation's site app goes to them. Default:
            every site (``@ALL``).
        local_rounds: ``LOCAL_ROUNDS`` of the job's config.json (FLIP's older hub sent it with the job; >= 1).
            Default: the app's, else 1.
        options: our job's options (``percentile``, ``aggregation``, ``uncertainty``, ``dp_epsilon``...: see
            :func:`flip.jobs.standard.standard_job`); checked by the job builder.

    Raises:
        AppError: the app does not fit the job type, or an option needs our plain contract (named).
        ValueError: a bad argument (named).
    """
    from flip.nvflare.executors.base import check_project_id, check_query
    from flip.simulate import site_names

    app = inspect_app(app_dir, job_type)
    check_path_name("job name", name)
    model_id = check_model_id(model_id) if model_id is not None else str(uuid.uuid4())
    project_id, query = check_project_id(project_id), check_query(query)  # the executors' own rules
    min_clients = check_positive_int("min_clients", min_clients)
    plan = JobPlan(app, name, model_id, project_id, query, min_clients)
    if participants is not None:
        plan.participants = site_names(list(participants))
        if len(plan.participants) < min_clients:
            raise ValueError(
                f"min_clients is {min_clients} but the job runs at {len(plan.participants)} sites "
                f"({', '.join(plan.participants)})"
            )
        if sites is not None and site_names(sites) != plan.participants:
            raise ValueError(f"sites {sites!r} and participants {plan.participants!r} differ: give one of them")
        sites = plan.participants
    if app.config.get(JOB_TYPE_KEY, app.job_type) != app.job_type:
        plan.config_updates[JOB_TYPE_KEY] = app.job_type
    if app.job_type == JobType.EVALUATION:
        if rounds is not None:
            raise ValueError(f"an evaluation job has no rounds: do not give rounds (got {rounds!r})")
        if local_rounds is not None:
            raise ValueError(f"an evaluation job has no rounds: do not give local_rounds (got {local_rounds!r})")
        if app.models:
            plan.sites = site_names(DEFAULT_EVALUATION_SITES if sites is None else sites)
            if len(plan.sites) < min_clients:
                raise ValueError(
                    f"min_clients is {min_clients} but the job is deployed to {len(plan.sites)} sites "
                    f"({', '.join(plan.sites)})"
                )
        return plan
    if sites is not None and participants is None:
        raise ValueError(
            f"sites name where an evaluation's site app goes: a {app.job_type} job is deployed to "
            f"every site (got {sites!r})"
        )
    trainer = app.contract(UserFile.TRAINER)
    if trainer != Contract.PLAIN:
        for option, plain_only in PLAIN_ONLY_OPTIONS.items():
            if options.get(option) in plain_only:
                raise AppError(
                    f"{option} {options[option]!r} changes the local training inside flip's plain "
                    f"contract: trainer.py's FLIP_TRAINER is {trainer.described}, which trains its own "
                    "model (use another method, or the plain contract)"
                )
    if app.job_type == JobType.DIFFUSION:
        if trainer == Contract.PLAIN:
            stages = [(stage, None, f"{GLOBAL_ROUNDS}_{stage.upper()}") for stage in _stage_names(app)]
        else:
            stages = list(DIFFUSION_STAGES)
        sources = []
        for stage, task, key in stages:
            num_rounds, source = _rounds(app.config, rounds, (key, GLOBAL_ROUNDS))
            plan.stages.append({"name": stage, "num_rounds": num_rounds, **({"train_task_name": task} if task else {})})
            plan.config_updates[key] = num_rounds
            sources.append(source)
        plan.rounds_source = ", ".join(dict.fromkeys(sources))
    else:
        plan.rounds, plan.rounds_source = _rounds(app.config, rounds, (GLOBAL_ROUNDS,))
        plan.config_updates[GLOBAL_ROUNDS] = plan.rounds
    if local_rounds is not None:
        plan.config_updates[LOCAL_ROUNDS] = check_positive_int("local_rounds", local_rounds)
    elif LOCAL_ROUNDS not in app.config:
        plan.config_updates[LOCAL_ROUNDS] = 1
        app.notes.append(
            f"{UserFile.CONFIG} has no {LOCAL_ROUNDS}: the job's copy gets {LOCAL_ROUNDS} 1 (FLIP's default)"
        )
    return plan


def build_job(plan: JobPlan, wait_after_min_clients: int = 60, **options: Any) -> FedJob:
    """The FedJob of ``plan`` (our job builders, with the executors of the app's contracts).

    Raises:
        ValueError: a bad option (named by the job builder).
    """
    from flip.jobs.evaluation import evaluation_job, flip_evaluation_job
    from flip.jobs.fed_opt import fed_opt_job
    from flip.jobs.multi_stage import multi_stage_job
    from flip.jobs.standard import standard_job

    app = plan.app
    common = {
        "name": plan.name,
        "model_id": plan.model_id,
        "min_clients": plan.min_clients,
        "wait_after_min_clients": wait_after_min_clients,
        "app_dir": app.app_dir,
    }
    project = {"project_id": plan.project_id, "query": plan.query}
    if app.job_type == JobType.EVALUATION:
        contract = app.contract(UserFile.EVALUATOR)
        if options:
            raise ValueError(f"an evaluation job takes none of the training options, got {sorted(options)}")
        if contract == Contract.PLAIN:
            evaluator = _executor("evaluate", contract, FlipTask.EVALUATE, **project)
            return evaluation_job(**common, evaluator=evaluator)
        evaluator = _executor("evaluate", contract, PTConstants.EvalTaskName, **project)
        return flip_evaluation_job(**common, evaluator=evaluator)
    trainer_contract = app.contract(UserFile.TRAINER)
    validator = _executor("validate", app.contract(UserFile.VALIDATOR), FlipTask.VALIDATE, **project)
    if app.job_type == JobType.DIFFUSION:
        trainers = None
        if trainer_contract != Contract.PLAIN:
            trainers = [
                (_executor("train", trainer_contract, s["train_task_name"], **project), [s["train_task_name"]])
                for s in plan.stages
            ]
        return multi_stage_job(**common, stages=plan.stages, trainers=trainers, validator=validator, **options)
    trainer = _executor("train", trainer_contract, FlipTask.TRAIN, **project)
    build = fed_opt_job if app.job_type == JobType.FED_OPT else standard_job
    return build(**common, num_rounds=plan.rounds, trainer=trainer, validator=validator, **options)


def _app_files(app: FlipApp) -> list[Path]:
    """The app's files a job carries: every regular top-level file but hidden ones (FLIP's bundler copies the
    app's files flat into custom/)."""
    return sorted(p for p in app.app_dir.iterdir() if p.is_file() and not p.name.startswith("."))


def _finish(folder: Path, plan: JobPlan) -> None:
    """Complete the exported job: the app's other files, the config.json values, the evaluation's two apps."""
    app = plan.app
    custom = folder / "app" / "custom"
    custom.mkdir(parents=True, exist_ok=True)
    checkpoints = {m.checkpoint for m in app.models}
    for path in _app_files(app):
        if not (custom / path.name).exists() and path.suffix not in (".py", ".json") and path.name not in checkpoints:
            shutil.copy2(path, custom / path.name)
    if plan.config_updates:
        config = dict(app.config)
        config.update(plan.config_updates)
        (custom / UserFile.CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if app.models:
        _split_evaluation(folder, plan, checkpoints)
    elif plan.participants:
        _deploy(folder, {"app": ["server", *plan.participants]}, plan.participants)


def _deploy(folder: Path, deploy_map: dict[str, list[str]], mandatory: list[str]) -> None:
    """Set the job's ``deploy_map`` and, if any, its ``mandatory_clients`` (meta.json)."""
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["deploy_map"] = deploy_map
    if mandatory:
        meta["mandatory_clients"] = list(mandatory)
    meta_path.write_text(json.dumps(meta, indent=4) + "\n")


def _split_evaluation(folder: Path, plan: JobPlan, checkpoints: set[str]) -> None:
    """Two apps: ``app_server`` (the server's config, the app and the checkpoints) and ``app`` (the sites' config
    and the app without the checkpoints), so the checkpoints never reach a site."""
    app_dir, server_dir = folder / "app", folder / "app_server"
    (server_dir / "config").mkdir(parents=True)
    (app_dir / "config" / "config_fed_server.json").rename(server_dir / "config" / "config_fed_server.json")
    shutil.copytree(app_dir / "custom", server_dir / "custom")
    for name in sorted(checkpoints):
        shutil.copy2(plan.app.app_dir / name, server_dir / "custom" / name)
    _deploy(folder, {"app_server": ["server"], "app": list(plan.sites)}, plan.participants)


@dataclass(frozen=True)
class CreatedJob:
    """A job folder ``flip job create`` wrote, and what it is."""

    path: Path
    plan: JobPlan


def create_job(
    app_dir: str | Path,
    out: str | Path,
    job_type: str | None = None,
    *,
    wait_after_min_clients: int = 60,
    **kwargs: Any,
) -> CreatedJob:
    """Write the job folder ``out`` from the app folder ``app_dir`` (``flip job create``).

    ``kwargs`` are :func:`plan_job`'s (model_id, project_id, query, min_clients, rounds, sites, participants,
    local_rounds) and our job's options. The job's name is ``out``'s name.

    Raises:
        AppError: the app does not fit the job type (named).
        ValueError: a bad argument, or ``out`` exists and is not an empty folder (named: nothing is overwritten).
    """
    from flip.jobs import export_job

    out = Path(out).expanduser().resolve()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"--out {out} exists and is not an empty folder: give a new folder for the job")
    plan_args = {
        k: kwargs.pop(k)
        for k in ("model_id", "project_id", "query", "min_clients", "rounds", "sites", "participants", "local_rounds")
        if k in kwargs
    }
    plan = plan_job(app_dir, job_type, name=out.name, **plan_args, **kwargs)
    job = build_job(plan, wait_after_min_clients=wait_after_min_clients, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".flip-job-", dir=out.parent) as tmp:
        folder = export_job(job, tmp)
        _finish(folder, plan)
        if out.exists():
            out.rmdir()
        folder.rename(out)
    return CreatedJob(out, plan)
