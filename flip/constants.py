"""Names shared by the server, the sites and the job builder: tasks, events, meta keys, files, statuses, and each
list of options (jobs, aggregation and uncertainty methods, FedOpt optimizers), written once."""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any, Literal


class FlipTask:
    """Task names sent by our workflows (NVFlare's own names where NVFlare's workflows send them)."""

    INIT_TRAINING = "init_training"
    TRAIN = "train"
    SWAG = "swag"
    VALIDATE = "validate"
    EVALUATE = "evaluate"


class FlipEvent:
    """Events fired by flip components (local to the site or server that fires them)."""

    SITES_PREPARED = "flip.sites_prepared"
    EVALUATION_STARTED = "flip.evaluation_started"
    ROUND_VALIDATED = "flip.round_validated"
    #: server: every participating site answered the round's per-round test, or its timeout passed
    ROUND_VALIDATION_DONE = "flip.round_validation_done"
    SWAG_STARTED = "flip.swag_started"
    TRAINING_STOPPED = "flip.training_stopped"
    EVALUATION_RESULT_RECEIVED = "flip.evaluation_result_received"
    SITE_ERROR = "flip.site_error"


class FlipMeta:
    """Keys in DXO meta and Shareable headers that flip puts on the wire."""

    METRICS = "flip_metrics"
    NUM_SAMPLES = "flip_num_samples"
    STAGE = "flip_stage"
    STAGE_PARAMS = "flip_stage_params"
    STAGE_STEPS = "flip_stage_steps"
    FEDPROX_MU = "flip_fedprox_mu"
    REPORT_CHECKSUM = "flip_report_checksum"
    SWAG_EPOCHS = "flip_swag_epochs"
    STAGE_ROUND = "flip_stage_round"
    STAGE_ROUNDS = "flip_stage_rounds"
    ERROR_REASON = "flip_error_reason"
    SITE_NAME = "flip_site_name"
    PRIVACY = "flip_privacy"


class FlipProp:
    """Names of the fl_ctx properties flip components hand each other data through (set private, not sticky).

    Written once here, so a reader needs no import of the writer (a controller, the aggregator) just for a name.
    """

    #: site: an executor hands its task's metrics to the ClientEventHandler
    TASK_METRICS = "flip.task_metrics"
    #: server, at ROUND_DONE: which sites' updates were aggregated this round and why others were excluded
    AGGREGATION_REPORT = "flip.aggregation_report"
    #: server, at ROUND_DONE of a FedDC round: its routing, whether it aggregated, the models' fingerprints
    FEDDC_REPORT = "flip.feddc_report"
    #: server, at ROUND_DONE of a FedOpt round: what the server optimizer did
    SERVER_STEP = "flip.server_step"
    #: server, with ROUND_VALIDATED: a site's metrics for the round's new global model
    ROUND_VALIDATION = "flip.round_validation"
    #: server, with TRAINING_STOPPED: why training ended before its planned rounds
    STOP_REASON = "flip.stop_reason"
    #: server: the model ids the EvaluateModels workflow asks the evaluation model locator for
    EVALUATE_MODEL_IDS = "flip.evaluate_model_ids"
    #: server, with EVALUATION_RESULT_RECEIVED: a site's evaluation result (a METRICS shareable)
    EVALUATION_RESULT = "flip.evaluation_result"
    #: server, with EVALUATION_RESULT_RECEIVED from FlipEvaluation: a site's one reply for every model (a METRICS
    #: shareable ``{model_name: metrics}``), recorded whole as the site's entry
    EVALUATION_REPLY = "flip.evaluation_reply"


class ComponentId:
    """Component ids written once here and used by the job builder and the components that look peers up."""

    PERSISTOR = "persistor"
    SHAREABLE_GENERATOR = "shareable_generator"
    AGGREGATOR = "aggregator"
    MODEL_LOCATOR = "model_locator"
    JSON_GENERATOR = "json_generator"
    PERSIST_AND_CLEANUP = "persist_and_cleanup"
    SERVER_EVENT_HANDLER = "server_event_handler"
    CLIENT_EVENT_HANDLER = "client_event_handler"
    INITIAL_MODEL_LOCATOR = "initial_model_locator"
    MODEL_SELECTOR = "model_selector"
    #: a site's differential-privacy policy, declared in its own local/privacy.json ("components"), never by a job
    SITE_PRIVACY = "flip_site_privacy"


class UserFile:
    """Files of the user's code in a job's custom/ folder, and what each must define."""

    TRAINER = "trainer.py"
    VALIDATOR = "validator.py"
    EVALUATOR = "evaluator.py"
    MODELS = "models.py"
    CONFIG = "config.json"

    TRAINER_CLASS = "FLIP_TRAINER"
    VALIDATOR_CLASS = "FLIP_VALIDATOR"
    EVALUATOR_CLASS = "FLIP_EVALUATOR"
    MODEL_FUNCTION = "get_model"


class RunFile:
    """Files a run writes in the server's run folder and uploads."""

    GLOBAL_MODEL = "global_model.pt"
    BEST_MODEL = "best_global_model.pt"
    METRICS = "metrics.json"
    MANIFEST = "manifest.json"
    RESULTS_DIR = "results"
    STAGING_DIR = "flip_upload"
    UPLOAD_PENDING = "upload_pending.json"
    #: the model's preprocessing model (TorchScript, or a state dict built by models.get_preprocessing())
    PREPROCESSING = "preprocessing.pt"
    ARTIFACTS_DIR = "flip_artifacts"
    #: sites' local models: on the server local_models/round_<n>/<site>.pt (kept only without
    #: delete_local_models_after_aggregation); in S3 the latest round's as local_models/<site>.pt
    LOCAL_MODELS_DIR = "local_models"
    #: per-round global models (keep_round_models): rounds/global_model_round_<n>.pt, in the artifacts and in S3
    ROUNDS_DIR = "rounds"
    ENSEMBLE = "ensemble.pt"
    SWAG = "swag.pt"
    UNCERTAINTY = "uncertainty.json"
    REPORT_DIR = "report"  # its objects are report/<file>
    REPORT_INDEX = "report/index.html"
    #: the ValidationJsonGenerator's file (in NVFlare's cross_site_val/ folder of the run) and its object key
    CROSS_VAL_RESULTS_FILE = "cross_val_results.json"
    CROSS_VAL_RESULTS = f"{RESULTS_DIR}/{CROSS_VAL_RESULTS_FILE}"
    #: the EvaluationJsonGenerator's folder and file in the run folder, and the file's object key
    EVALUATION_DIR = "cross_site_eval"
    EVALUATION_RESULTS_FILE = "evaluation_results.json"
    EVALUATION_RESULTS = f"{RESULTS_DIR}/{EVALUATION_RESULTS_FILE}"
    #: NVFlare's PTFileModelPersistor's file of the final global model, and its name in the cross-site validation
    #: results (CrossSiteModelEval prefixes a server model's name with SRV_)
    PERSISTOR_GLOBAL_MODEL = "FL_global_model.pt"
    SERVER_MODEL = f"SRV_{PERSISTOR_GLOBAL_MODEL}"


class JobName:
    """The job types (``flip/jobs`` builds each; ``jobs/<name>`` is its checked-in folder)."""

    STANDARD = "standard"
    EVALUATION = "evaluation"
    FED_OPT = "fed_opt"
    MULTI_STAGE = "multi_stage"


#: every job type, in the order ``flip jobs export`` writes them
JOB_NAMES = (JobName.STANDARD, JobName.EVALUATION, JobName.FED_OPT, JobName.MULTI_STAGE)
#: the jobs ``flip demo --job`` shows (evaluation: trains with the standard job first, then evaluates that model)
DEMO_JOBS = (JobName.STANDARD, JobName.FED_OPT, JobName.MULTI_STAGE, JobName.EVALUATION)


class Aggregation:
    """The standard job's aggregation methods (its ``aggregation`` option)."""

    FEDAVG = "fedavg"
    FEDPROX = "fedprox"
    FEDDC = "feddc"


AGGREGATIONS = (Aggregation.FEDAVG, Aggregation.FEDPROX, Aggregation.FEDDC)


class Uncertainty:
    """The uncertainty methods (the standard job's ``uncertainty`` option, UncertaintyPlan's ``method``)."""

    NONE = "none"
    ENSEMBLE = "ensemble"
    MC_DROPOUT = "mc_dropout"
    SWAG = "swag"


UNCERTAINTY_METHODS = (Uncertainty.NONE, Uncertainty.ENSEMBLE, Uncertainty.MC_DROPOUT, Uncertainty.SWAG)


class FedOptimizer:
    """The FedOpt server optimizers (FedOptShareableGenerator's ``optimizer``)."""

    SGD = "sgd"
    ADAM = "adam"


FEDOPT_OPTIMIZERS = (FedOptimizer.SGD, FedOptimizer.ADAM)


class RunStatus(str, Enum):
    """The run's status lifecycle (DESIGN.md). The DLR demonstrator's states map onto it."""

    INITIATED = "INITIATED"
    PREPARED = "PREPARED"
    TRAINING_STARTED = "TRAINING_STARTED"
    RESULTS_UPLOADED = "RESULTS_UPLOADED"
    ERROR = "ERROR"
    STOPPED = "STOPPED"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.RESULTS_UPLOADED, RunStatus.ERROR, RunStatus.STOPPED)


#: The job id NVFlare's simulator gives every run; flip makes it unique per run for the S3 key.
SIMULATOR_JOB_ID = "simulate_job"

#: S3 upload defaults in MiB (the FLIP_S3_* settings' defaults; see flip.storage.client): objects of up to 1 GiB go in
#: one request, larger ones in 64 MiB parts. Measured with benchmarks/s3_upload.py (README, performance).
DEFAULT_THRESHOLD_MB = 1024
DEFAULT_PART_SIZE_MB = 64


# ---------------------------------------------------------------------------------------------------------------------
# FLIP's names, for researchers' apps written against FLIP's `flip` package (flip-utils/flip/constants/*.py).
# Values are FLIP's exactly. Our own names above are unchanged.
# ---------------------------------------------------------------------------------------------------------------------


class ResourceType(StrEnum):
    """Kinds of imaging resources a trust's imaging API serves (FLIP: flip_constants.py)."""

    DICOM = "DICOM"
    NIFTI = "NIFTI"
    SEGMENTATION = "SEG"
    ALL = "ALL"


class FlipTasks(StrEnum):
    """Task names of FLIP's workflows (FLIP: flip_constants.py)."""

    INIT_TRAINING = "init_training"
    POST_VALIDATION = "post_validation"
    CLEANUP = "cleanup"
    INIT_TASK = "init_task"
    POST_TASK = "post_task"


class FlipEvents:
    """Event names of FLIP's workflows, plain strings as NVFlare's events are (FLIP: flip_constants.py)."""

    TRAINING_INITIATED = "_training_initiated"
    RESULTS_UPLOAD_STARTED = "_results_upload_started"
    RESULTS_UPLOAD_COMPLETED = "_results_upload_completed"
    SEND_RESULT = "_send_result"
    LOG_EXCEPTION = "_log_exception"
    ABORTED = "_aborted"
    TASK_INITIATED = "_task_initiated"


class ModelStatus(StrEnum):
    """A model's status on FLIP's hub, FLIP's newest names in FLIP's order (FLIP: flip_constants.py).

    ``TRAINING_STARTED`` is the older name of ``RUNNING`` (flip-fl-base and older FLIP): ``ModelStatus.TRAINING_STARTED``
    and ``ModelStatus("TRAINING_STARTED")`` both give ``RUNNING``, whose value is what the hub takes.
    """

    PENDING = "PENDING"
    INITIATED = "INITIATED"
    PREPARED = "PREPARED"
    RUNNING = "RUNNING"
    RESULTS_UPLOADED = "RESULTS_UPLOADED"
    ERROR = "ERROR"
    STOPPED = "STOPPED"
    RESULTS_UPLOAD_FAILED = "RESULTS_UPLOAD_FAILED"
    TRAINING_STARTED = "RUNNING"  # an alias (same value): the older name of RUNNING

    @classmethod
    def _missing_(cls, value: object) -> ModelStatus | None:
        return cls.RUNNING if value == "TRAINING_STARTED" else None


class FlipMetricsLabel(StrEnum):
    """Standard metric labels (FLIP: flip_constants.py)."""

    LOSS_FUNCTION = "LOSS_FUNCTION"
    DL_RESULT = "DL_RESULT"
    AVERAGE_SCORE = "AVERAGE_SCORE"


class FLLogEvent(StrEnum):
    """Typed round events of a training log on FLIP's hub (FLIP: flip-utils/flip/schemas.py, hub types.py).

    Rounds are 1-based. ``QUEUE_POSITION`` is the hub's own (its scheduler writes it); the FL side never sends it.
    """

    ROUND_STARTED = "ROUND_STARTED"
    CLIENT_RESULT_RECEIVED = "CLIENT_RESULT_RECEIVED"
    ROUND_AGGREGATED = "ROUND_AGGREGATED"
    QUEUE_POSITION = "QUEUE_POSITION"


class FlipMetaKey(StrEnum):
    """Meta keys of FLIP's diffusion and evaluation workflows (FLIP: flip_constants.py)."""

    STAGE = "stage"
    EVAL_MODEL_NAME = "flip_eval_model_name"


class JobType(StrEnum):
    """FLIP's job types (FLIP: job_types.py)."""

    STANDARD = "standard"
    EVALUATION = "evaluation"
    FED_OPT = "fed_opt"
    DIFFUSION = "diffusion_model"


JobTypeStr = Literal["standard", "evaluation", "fed_opt", "diffusion_model"]
#: the job types ``flip job create --job-type`` takes: FLIP's, and our name of FLIP's diffusion_model (multi_stage)
JOB_TYPE_CHOICES = (*(t.value for t in JobType), JobName.MULTI_STAGE)


class _PTConstantsType(type):
    """Gives ``PTConstants.PTModelsDir`` from the environment (dev or prod) when it is read."""

    @property
    def PTModelsDir(cls) -> str:  # FLIP's name
        """``""`` in dev, ``"models"`` in prod (FLIP computes it once at import; the environment does not change)."""
        from flip.settings import flip_constant

        return "" if flip_constant("LOCAL_DEV") else "models"


class PTConstants(metaclass=_PTConstantsType):
    """File and task names of FLIP's PyTorch jobs (FLIP: pt_constants.py); ``PTModelsDir`` is "" dev, "models" prod."""

    PTServerName = "server"
    PTModelName = "model.pt"
    PTFileModelName = "FL_global_model.pt"
    BestModelFilename = "best_FL_global_model.pt"
    PTLocalModelName = "local_model.pt"
    CrossValResultsJsonFilename = "cross_val_results.json"
    EvalResultsFilename = "evaluation_results.json"
    EvalFailuresFilename = "evaluation_failures.json"
    EvalDir = "evaluation_results"
    EvalTaskName = "evaluation"


class _FlipConstants:
    """FLIP's settings object: ``FlipConstants.LOCAL_DEV``, ``.DEV_DATAFRAME``, ``.MIN_CLIENTS``, ``.NET_ID``...

    Each read comes from the environment through flip.settings (FLIP's names and defaults; ``LOCAL_DEV`` is the
    dev/prod decision of ``LOCAL_DEV`` and ``FLIP_ENV``). Secrets are ``SecretStr``. An unknown name raises
    AttributeError naming the allowed ones; an invalid variable raises SettingsError naming it.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        from flip.settings import flip_constant

        return flip_constant(name)

    def __dir__(self) -> list[str]:
        from flip.settings import FLIP_NAMES

        return sorted(FLIP_NAMES)

    def __repr__(self) -> str:
        return "FlipConstants(<FLIP's settings, read from the environment>)"


FlipConstants = _FlipConstants()


def get_flip_constants() -> _FlipConstants:
    """Return FLIP's settings object (FLIP's explicit accessor of ``FlipConstants``)."""
    return FlipConstants
