"""A researcher's FLIP app runs here unchanged: every name it imports from FLIP's `flip`, and how each behaves.

The tables name where FLIP defines each name (londonaicentre/FLIP, flip-utils/...) and
check what an app relies on: existence, parameter names and defaults, constant values. Then the behaviour: the dev
data API on real files, the dev/prod rule of LOCAL_DEV and FLIP_ENV, per-site data, get_model_weights_diff,
FLIPDataset, and the metrics path from send_metrics_value through NVFlare's fed-event runner to the server's parser.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import math
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from nvflare.apis.dxo import DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.fuel.utils import fobs
from nvflare.widgets.fed_event import FedEventRunner

from flip import FLIP
from flip.constants import FlipEvents, JobType, ModelStatus, PTConstants, ResourceType
from flip.errors import CleanupError, PlatformError, SettingsError
from flip.exceptions import ResultsUploadError
from flip.nvflare.metrics import (
    MetricDropped,
    MetricEventLog,
    handle_metrics_event,
    parse_metric_event,
    send_metrics_value,
)
from flip.platform.dev import LocalPlatform
from flip.platform.flip_api import FLIPBase
from flip.platform.hub import HubPlatform
from flip.platform.site import current_site, set_current_site, site_context
from flip.settings import load_settings, resolve_env
from flip.simulate import parse_site_data
from flip.utils import Utils, get_model_weights_diff
from flip.utils.flip_dataset import FLIPDataset

pytestmark = pytest.mark.unit

FLIP_VARS = [
    "LOCAL_DEV",
    "FLIP_ENV",
    "DEV_DATAFRAME",
    "DEV_IMAGES_DIR",
    "FLIP_SITE_DATA",
    "FLIP_LOCAL_DIR",
    "FLIP_HUB_URL",
    "FLIP_HUB_API_KEY",
    "NET_ID",
    "MIN_CLIENTS",
    "UPLOADED_FEDERATED_DATA_BUCKET",
    "FLIP_API_INTERNAL_URL",
    "INTERNAL_SERVICE_KEY",
    "INTERNAL_SERVICE_KEY_FILE",
    "TRUST_INTERNAL_SERVICE_KEY",
    "DATA_ACCESS_API_URL",
    "IMAGING_API_URL",
    "IMAGES_DIR",
]
MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No FLIP variable from the outer environment; no current site before or after."""
    for var in FLIP_VARS:
        monkeypatch.setenv(var, "")  # recorded, so whatever a test sets is undone
        monkeypatch.delenv(var)
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip-local"))
    set_current_site(None)
    yield
    set_current_site(None)


# ---------------------------------------------------------------------------------------------------------------
# 1. Every name a FLIP app imports, where FLIP defines it
# ---------------------------------------------------------------------------------------------------------------
FLIP_CONSTANTS = "flip-utils/flip/constants/flip_constants.py"
NAMES = [
    # (our module, name, where FLIP defines it)
    ("flip", "FLIP", "flip-utils/flip/core/factory.py"),
    ("flip", "FLIPBase", "flip-utils/flip/core/base.py"),
    ("flip", "ResultsUploadError", "flip-utils/flip/exceptions.py"),
    ("flip.exceptions", "ResultsUploadError", "flip-utils/flip/exceptions.py"),
    ("flip.constants", "PTConstants", "flip-utils/flip/constants/pt_constants.py"),
    ("flip.constants", "ResourceType", FLIP_CONSTANTS),
    ("flip.constants", "FlipConstants", FLIP_CONSTANTS),
    ("flip.constants", "get_flip_constants", FLIP_CONSTANTS),
    ("flip.constants", "ModelStatus", FLIP_CONSTANTS),
    ("flip.constants", "FlipEvents", FLIP_CONSTANTS),
    ("flip.constants", "FlipTasks", FLIP_CONSTANTS),
    ("flip.constants", "FlipMetaKey", FLIP_CONSTANTS),
    ("flip.constants", "FlipMetricsLabel", FLIP_CONSTANTS),
    ("flip.constants", "JobType", "flip-utils/flip/constants/job_types.py"),
    ("flip.constants", "JobTypeStr", "flip-utils/flip/constants/job_types.py"),
    ("flip.utils", "get_model_weights_diff", "flip-utils/flip/utils/model_weights_handling.py"),
    ("flip.utils", "FLIPDataset", "flip-utils/flip/utils/flip_dataset.py (flip-fl-base monai_fl branch)"),
    ("flip.utils", "Utils", "flip-utils/flip/utils/utils.py"),
    ("flip.utils.flip_dataset", "FLIPDataset", "flip-utils/flip/utils/flip_dataset.py"),
    ("flip.utils.model_weights_handling", "get_model_weights_diff", "flip-utils/flip/utils/model_weights_handling.py"),
    ("flip.utils.utils", "Utils", "flip-utils/flip/utils/utils.py"),
    ("flip.nvflare.metrics", "send_metrics_value", "flip-utils/flip/nvflare/metrics.py"),
    ("flip.nvflare.metrics", "handle_metrics_event", "flip-utils/flip/nvflare/metrics.py"),
]


@pytest.mark.parametrize(("module", "name", "flip_file"), NAMES, ids=[f"{m}.{n}" for m, n, _ in NAMES])
def test_every_name_a_flip_app_imports_exists(module, name, flip_file):
    assert hasattr(importlib.import_module(module), name), f"{module}.{name} (FLIP: {flip_file}) is missing"


E = inspect.Parameter.empty
BASE_METHODS = {  # FLIPBase's interface (FLIP: flip-utils/flip/core/base.py): parameter names and defaults
    "get_dataframe": [("project_id", E), ("query", E)],
    "get_by_accession_number": [("project_id", E), ("accession_id", E), ("resource_type", ResourceType.NIFTI)],
    "add_resource": [("project_id", E), ("accession_id", E), ("scan_id", E), ("resource_id", E), ("files", E)],
    "update_status": [("model_id", E), ("new_model_status", E)],
    "send_metrics": [("client_name", E), ("model_id", E), ("label", E), ("value", E), ("round", E)],
    "send_handled_exception": [("formatted_exception", E), ("client_name", E), ("model_id", E)],
    "send_event": [
        ("model_id", E),
        ("event_type", E),
        ("global_round", E),
        ("client_name", None),
        ("details", None),
        ("success", True),
    ],
    "upload_results_to_s3": [("results_folder", E), ("model_id", E)],
    "cleanup": [("path", E)],
    "check_query": [("query", E)],
    "check_project_id": [("project_id", E)],
    "check_accession_id": [("accession_id", E)],
    "check_resource_type": [("resource_type", E)],
}


def _params(function, skip_self=False):
    params = list(inspect.signature(function).parameters.values())
    return [(p.name, p.default) for p in params[1 if skip_self else 0 :]]


FUNCTIONS = [
    ("flip.FLIP", FLIP, [("job_type", JobType.STANDARD), ("kwargs", E)]),
    # FLIP's default is flip=FLIP(), built when the module is imported; ours is None (the module's logger)
    (
        "send_metrics_value",
        send_metrics_value,
        [("label", E), ("value", E), ("fl_ctx", E), ("round", None), ("flip", None)],
    ),
    (
        "handle_metrics_event",
        handle_metrics_event,
        [("event_data", E), ("global_round", E), ("model_id", E), ("flip", None)],
    ),
    (
        "get_model_weights_diff",
        get_model_weights_diff,
        [("original_weights", E), ("new_weights", E), ("iterations", E)],
    ),
    (
        "FLIPDataset.__init__",
        FLIPDataset.__init__,
        [("self", E), ("flip", E), ("project_id", E), ("query", E), ("transform", None)],
    ),
    ("Utils.is_valid_uuid", Utils.is_valid_uuid, [("val", E)]),
    ("Utils.is_string_empty", Utils.is_string_empty, [("val", E)]),
    ("Utils.hash_for_log", Utils.hash_for_log, [("value", E)]),
]


@pytest.mark.parametrize(("what", "function", "expected"), FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
def test_signatures_match_flip(what, function, expected):
    assert _params(function) == expected


@pytest.mark.parametrize("cls", [FLIPBase, LocalPlatform, HubPlatform])
@pytest.mark.parametrize("method", sorted(BASE_METHODS))
def test_platform_methods_match_flipbase(cls, method):
    assert _params(getattr(cls, method), skip_self=True) == BASE_METHODS[method]


def test_our_platforms_are_flipbase_and_flip_returns_them():
    assert issubclass(LocalPlatform, FLIPBase) and issubclass(HubPlatform, FLIPBase)
    assert set(FLIPBase.__abstractmethods__) == set(BASE_METHODS) - {n for n in BASE_METHODS if n.startswith("check_")}
    flip = FLIP()
    assert isinstance(flip, FLIPBase) and isinstance(flip.logger, logging.Logger)
    assert issubclass(ResultsUploadError, Exception)


CONSTANTS = [  # (expression, FLIP's value)
    ("PTConstants.PTServerName", "server"),
    ("PTConstants.PTModelName", "model.pt"),
    ("PTConstants.PTFileModelName", "FL_global_model.pt"),
    ("PTConstants.BestModelFilename", "best_FL_global_model.pt"),
    ("PTConstants.PTLocalModelName", "local_model.pt"),
    ("PTConstants.CrossValResultsJsonFilename", "cross_val_results.json"),
    ("PTConstants.EvalResultsFilename", "evaluation_results.json"),
    ("PTConstants.EvalFailuresFilename", "evaluation_failures.json"),
    ("PTConstants.EvalDir", "evaluation_results"),
    ("PTConstants.EvalTaskName", "evaluation"),
    ("ResourceType.DICOM", "DICOM"),
    ("ResourceType.NIFTI", "NIFTI"),
    ("ResourceType.SEGMENTATION", "SEG"),
    ("ResourceType.ALL", "ALL"),
    ("FlipTasks.INIT_TRAINING", "init_training"),
    ("FlipTasks.POST_VALIDATION", "post_validation"),
    ("FlipTasks.CLEANUP", "cleanup"),
    ("FlipTasks.INIT_TASK", "init_task"),
    ("FlipTasks.POST_TASK", "post_task"),
    ("FlipEvents.TRAINING_INITIATED", "_training_initiated"),
    ("FlipEvents.RESULTS_UPLOAD_STARTED", "_results_upload_started"),
    ("FlipEvents.RESULTS_UPLOAD_COMPLETED", "_results_upload_completed"),
    ("FlipEvents.SEND_RESULT", "_send_result"),
    ("FlipEvents.LOG_EXCEPTION", "_log_exception"),
    ("FlipEvents.ABORTED", "_aborted"),
    ("FlipEvents.TASK_INITIATED", "_task_initiated"),
    ("FlipMetricsLabel.LOSS_FUNCTION", "LOSS_FUNCTION"),
    ("FlipMetricsLabel.DL_RESULT", "DL_RESULT"),
    ("FlipMetricsLabel.AVERAGE_SCORE", "AVERAGE_SCORE"),
    ("FlipMetaKey.STAGE", "stage"),
    ("FlipMetaKey.EVAL_MODEL_NAME", "flip_eval_model_name"),
    ("JobType.STANDARD", "standard"),
    ("JobType.EVALUATION", "evaluation"),
    ("JobType.FED_OPT", "fed_opt"),
    ("JobType.DIFFUSION", "diffusion_model"),
    ("ModelStatus.TRAINING_STARTED", "RUNNING"),  # the older name of RUNNING
]


@pytest.mark.parametrize(("expression", "value"), CONSTANTS, ids=[c[0] for c in CONSTANTS])
def test_constant_values_are_flips(expression, value):
    constants = importlib.import_module("flip.constants")
    holder, attribute = expression.split(".")
    got = getattr(getattr(constants, holder), attribute)
    assert got == value and str(got) == value and f"{got}" == value  # StrEnum: equal to, printed as, its value


def test_model_status_is_flips_newest_in_order_and_takes_the_older_name():
    assert [s.value for s in ModelStatus] == [
        "PENDING",
        "INITIATED",
        "PREPARED",
        "RUNNING",
        "RESULTS_UPLOADED",
        "ERROR",
        "STOPPED",
        "RESULTS_UPLOAD_FAILED",
    ]
    assert ModelStatus("TRAINING_STARTED") is ModelStatus.RUNNING is ModelStatus.TRAINING_STARTED
    with pytest.raises(ValueError):
        ModelStatus("TRAINING")


# ---------------------------------------------------------------------------------------------------------------
# 2. The factory and the dev/prod rule (LOCAL_DEV is FLIP's, FLIP_ENV ours)
# ---------------------------------------------------------------------------------------------------------------
ENV_RULE = [  # (FLIP_ENV, LOCAL_DEV, decision or None for an error)
    (None, None, "dev"),
    (None, "true", "dev"),
    (None, "1", "dev"),
    (None, "yes", "dev"),
    (None, "false", "prod"),
    (None, "0", "prod"),
    (None, "no", "prod"),
    ("dev", None, "dev"),
    ("prod", None, "prod"),
    ("dev", "true", "dev"),
    ("prod", "false", "prod"),
    ("prod", "true", None),
    ("dev", "false", None),
]


@pytest.mark.parametrize(("flip_env", "local_dev", "decision"), ENV_RULE)
def test_local_dev_and_flip_env_each_decide_and_must_agree(monkeypatch, flip_env, local_dev, decision):
    if flip_env is not None:
        monkeypatch.setenv("FLIP_ENV", flip_env)
    if local_dev is not None:
        monkeypatch.setenv("LOCAL_DEV", local_dev)
    if decision is None:
        with pytest.raises(SettingsError, match=rf"FLIP_ENV={flip_env} and LOCAL_DEV=(true|false) contradict"):
            FLIP()
        return
    flip = FLIP()
    assert isinstance(flip, HubPlatform if decision == "prod" else LocalPlatform) and flip.name == decision
    assert PTConstants.PTModelsDir == ("" if decision == "dev" else "models")
    from flip.constants import FlipConstants

    assert FlipConstants.LOCAL_DEV is (decision == "dev")


def test_resolve_env_is_the_one_rule():
    assert (
        resolve_env(None, None) == "dev" and resolve_env(None, False) == "prod" and resolve_env("prod", None) == "prod"
    )
    with pytest.raises(SettingsError, match="FLIP_ENV=dev and LOCAL_DEV=false"):
        resolve_env("dev", False)


def test_local_dev_garbage_is_named(monkeypatch):
    monkeypatch.setenv("LOCAL_DEV", "maybe")
    with pytest.raises(SettingsError, match=r"LOCAL_DEV: Input should be a valid boolean.*'maybe'"):
        FLIP()


@pytest.mark.parametrize("job_type", ["standard", "evaluation", "fed_opt", "diffusion_model", *JobType])
def test_every_job_type_gives_the_platform(job_type):
    assert isinstance(FLIP(job_type), LocalPlatform) and isinstance(FLIP(job_type=job_type), LocalPlatform)


@pytest.mark.parametrize("job_type", ["x", "Standard", "", None, 3])
def test_unknown_job_type_names_it_and_the_allowed(job_type):
    with pytest.raises(ValueError) as err:
        FLIP(job_type=job_type)
    assert repr(job_type) in str(err.value)
    assert "['standard', 'evaluation', 'fed_opt', 'diffusion_model']" in str(err.value)


def test_our_callers_still_pass_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "a"))
    settings = load_settings()
    assert FLIP(settings).local_dir == (tmp_path / "a").resolve()
    assert FLIP(settings=settings).local_dir == (tmp_path / "a").resolve()
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['model'\\]"):
        FLIP(model=1)


def test_flip_constants_reads_flips_variables(monkeypatch, tmp_path):
    from flip.constants import FlipConstants, get_flip_constants

    monkeypatch.setenv("DEV_DATAFRAME", str(tmp_path / "c.csv"))
    monkeypatch.setenv("MIN_CLIENTS", "3")
    monkeypatch.setenv("NET_ID", "net-7")
    monkeypatch.setenv("TRUST_INTERNAL_SERVICE_KEY", "trust-s3cr3t")
    assert (FlipConstants.DEV_DATAFRAME, FlipConstants.DEV_IMAGES_DIR) == (str(tmp_path / "c.csv"), "")
    assert (FlipConstants.MIN_CLIENTS, FlipConstants.NET_ID) == (3, "net-7")
    # the bucket results go to: FLIP_MODELS_BUCKET's default (flip-models), not FLIP's placeholder s3://default-bucket
    assert FlipConstants.UPLOADED_FEDERATED_DATA_BUCKET == "s3://flip-models"
    assert FlipConstants.FLIP_API_INTERNAL_URL == "http://localhost:8000"  # FLIP's default while unset
    key = FlipConstants.TRUST_INTERNAL_SERVICE_KEY
    assert "trust-s3cr3t" not in f"{key} {key!r}" and key.get_secret_value() == "trust-s3cr3t"
    assert get_flip_constants() is FlipConstants and "LOCAL_DEV" in dir(FlipConstants)
    with pytest.raises(AttributeError, match="FlipConstants has no setting 'DEV_FRAME'.*'DEV_DATAFRAME'"):
        _ = FlipConstants.DEV_FRAME
    monkeypatch.setenv("MIN_CLIENTS", "0")
    with pytest.raises(SettingsError, match="MIN_CLIENTS: Input should be greater than 0"):
        _ = FlipConstants.MIN_CLIENTS


# ---------------------------------------------------------------------------------------------------------------
# 3. The dev data API on real files
# ---------------------------------------------------------------------------------------------------------------
def write_dicom(path: Path) -> None:
    """A small real DICOM file (pydicom), as the xray tutorial reads with .rglob('*.dcm')."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    """A cohort CSV (accession ids with leading zeros and a label column) and its image folders."""
    csv = tmp_path / "cohort.csv"
    csv.write_text("accession_id,Effusion\n00123,Yes\nACC-2,No\n")
    images = tmp_path / "images"
    write_dicom(images / "00123" / "study" / "1.dcm")
    (images / "ACC-2").mkdir(parents=True)
    monkeypatch.setenv("DEV_DATAFRAME", str(csv))
    monkeypatch.setenv("DEV_IMAGES_DIR", str(images))
    return csv, images


def test_dev_get_dataframe_reads_the_csv(cohort):
    frame = FLIP().get_dataframe("project-1", "SELECT * FROM cohort")
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["accession_id"]) == ["00123", "ACC-2"] and list(frame["Effusion"]) == ["Yes", "No"]


def test_dev_get_dataframe_without_accession_column_names_file_and_column(tmp_path, monkeypatch):
    csv = tmp_path / "no_accession.csv"
    csv.write_text("patient,label\np1,1\n")
    monkeypatch.setenv("DEV_DATAFRAME", str(csv))
    with pytest.raises(ValueError, match=rf"{csv} has no 'accession_id' column"):
        FLIP().get_dataframe("p", "q")


@pytest.mark.parametrize(("project_id", "query"), [(1, "q"), ("p", None), (b"p", "q"), ("p", ["q"])])
def test_dev_get_dataframe_checks_types_as_flip(cohort, project_id, query):
    with pytest.raises(TypeError, match=r"(project_id|query) must be a str, got"):
        FLIP().get_dataframe(project_id, query)


def test_dev_get_dataframe_unset_or_missing_csv_is_clear(tmp_path, monkeypatch):
    with pytest.raises(PlatformError, match=r"no dev data for this process .* DEV_DATAFRAME is not set"):
        FLIP().get_dataframe("p", "q")
    monkeypatch.setenv("DEV_DATAFRAME", str(tmp_path / "absent.csv"))
    with pytest.raises(PlatformError, match=r"absent.csv is not a file"):
        FLIP().get_dataframe("p", "q")
    (tmp_path / "binary.csv").write_bytes(b"\xff\xfe\x00garbage\x00\xff")
    monkeypatch.setenv("DEV_DATAFRAME", str(tmp_path / "binary.csv"))
    with pytest.raises(PlatformError, match=r"cannot read the dev dataframe .*binary.csv as CSV"):
        FLIP().get_dataframe("p", "q")


def test_dev_get_by_accession_number_gives_the_folder(cohort):
    _, images = cohort
    flip = FLIP()
    path = flip.get_by_accession_number("p", "00123", resource_type=[ResourceType.DICOM])
    assert isinstance(path, Path) and path == images / "00123"
    assert [p.name for p in path.rglob("*.dcm")] == ["1.dcm"]
    assert flip.get_by_accession_number("p", "00123", ResourceType.DICOM) == path  # positional
    assert flip.get_by_accession_number(project_id="p", accession_id="ACC-2") == images / "ACC-2"  # default NIFTI
    # a tutorial's loop: every accession of the dataframe, as the dataframe gives it
    frame = flip.get_dataframe("p", "q")
    assert [flip.get_by_accession_number("p", a, [ResourceType.DICOM]) for a in frame["accession_id"]] == [
        images / "00123",
        images / "ACC-2",
    ]


def test_dev_missing_accession_folder_is_created_empty(cohort):
    _, images = cohort
    path = FLIP().get_by_accession_number("p", "NEW-1", [ResourceType.NIFTI, ResourceType.SEGMENTATION])
    assert path == images / "NEW-1" and path.is_dir() and list(path.iterdir()) == []


def test_dev_image_root_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("DEV_IMAGES_DIR", str(tmp_path / "typo"))
    with pytest.raises(PlatformError, match=r"the dev image root .*typo is not a folder"):
        FLIP().get_by_accession_number("p", "A1")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "resource_type", ["NIFTI", ("DICOM",), (ResourceType.DICOM,), [ResourceType.DICOM, "SEG"], None, 1]
)
def test_resource_type_is_checked_as_flip(cohort, resource_type):
    flip = FLIP()
    with pytest.raises(TypeError, match="resource_type"):
        flip.check_resource_type(resource_type)
    with pytest.raises(TypeError, match="resource_type"):
        flip.get_by_accession_number("p", "00123", resource_type=resource_type)


def test_check_methods_as_flip():
    flip = FLIP()
    assert flip.check_resource_type(ResourceType.ALL) == [ResourceType.ALL]
    listed = [ResourceType.DICOM, ResourceType.SEGMENTATION]
    assert flip.check_resource_type(listed) is listed
    for check in (flip.check_query, flip.check_project_id, flip.check_accession_id):
        check("ok")
        with pytest.raises(TypeError, match="must be a str, got int"):
            check(5)


def test_dev_reporting_calls_only_log_and_never_delete(cohort, tmp_path, caplog):
    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "model.pt").write_bytes(b"weights")
    flip = FLIP()
    caplog.set_level(logging.INFO, logger="flip")
    flip.add_resource("p", "00123", "scan-1", "SEG", ["/tmp/seg.nii.gz"])
    flip.update_status(MODEL_ID, ModelStatus.RUNNING)
    flip.send_metrics("site-1", MODEL_ID, "TRAIN_LOSS", np.float32(0.25), 3)
    flip.send_handled_exception("Traceback...\nValueError: patient 00123", "site-1", MODEL_ID)
    flip.send_event(MODEL_ID, "ROUND_STARTED", 1, details={"total_rounds": 3})
    flip.upload_results_to_s3(keep, MODEL_ID)
    flip.cleanup(keep)
    assert (keep / "model.pt").read_bytes() == b"weights"
    text = caplog.text
    assert "RUNNING" in text and "TRAIN_LOSS = 0.2500" in text and "deletes nothing" in text
    assert "00123" not in text and "patient" not in text and Utils.hash_for_log("00123") in text
    with pytest.raises(TypeError, match="files must be a list"):
        flip.add_resource("p", "00123", "scan-1", "SEG", "/tmp/seg.nii.gz")
    with pytest.raises(TypeError, match="scan_id must be a str"):
        flip.add_resource("p", "00123", 7, "SEG", [])


def test_dev_logs_hold_no_cohort_data_or_accession_ids(cohort, caplog):
    caplog.set_level(logging.DEBUG, logger="flip")
    flip = FLIP()
    frame = flip.get_dataframe("p", "q")
    for accession in [*frame["accession_id"], "NEW-9"]:
        flip.get_by_accession_number("p", accession, [ResourceType.DICOM])
    assert "2 rows, 2 columns" in caplog.text
    for secret in ("00123", "ACC-2", "NEW-9", "Effusion", "Yes"):
        assert secret not in caplog.text


def test_prod_data_calls_name_what_the_trust_client_needs(monkeypatch, tmp_path):
    """Prod data calls go to the trust's services: without the trust key or IMAGES_DIR they fail naming them."""
    monkeypatch.setenv("LOCAL_DEV", "false")
    flip = FLIP()
    with pytest.raises(SettingsError, match="TRUST_INTERNAL_SERVICE_KEY is not set"):
        flip.get_dataframe("p", "q")
    monkeypatch.setenv("TRUST_INTERNAL_SERVICE_KEY", "trust-s3cr3t")
    flip = FLIP()
    with pytest.raises(SettingsError, match="IMAGES_DIR is not set") as err:
        flip.get_by_accession_number("p", "A1", [ResourceType.DICOM])
    assert "trust-s3cr3t" not in str(err.value) and "trust-s3cr3t" not in repr(flip.trust)
    monkeypatch.setenv("DATA_ACCESS_API_URL", "http://trust.example.org:8001")
    with pytest.raises(SettingsError, match=r"DATA_ACCESS_API_URL: data-access service URL .* https"):
        FLIP().get_dataframe("p", "q")
    with pytest.raises(TypeError):
        flip.get_dataframe(1, "q")
    with pytest.raises(ValueError, match="accession id '../x' is invalid"):
        flip.get_by_accession_number("p", "../x")


def test_prod_hub_calls_check_as_flip_and_never_break_the_run(monkeypatch, tmp_path, caplog):
    """FLIP's hub calls check their arguments as FLIP does; a hub that cannot be reached is logged, never raised."""
    monkeypatch.setenv("LOCAL_DEV", "false")
    monkeypatch.setenv("FLIP_API_INTERNAL_URL", "http://127.0.0.1:9/api")
    monkeypatch.setenv("INTERNAL_SERVICE_KEY", "hub-s3cr3t")
    monkeypatch.setenv("FLIP_HUB_RETRIES", "1")
    flip = FLIP()
    caplog.set_level(logging.INFO, logger="flip")
    with pytest.raises(ValueError, match="model_id must be a UUID"):
        flip.update_status("not-a-uuid", ModelStatus.RUNNING)
    with pytest.raises(ValueError, match="model_id must be a UUID"):
        flip.send_handled_exception("trace", "site-1", "nope")
    with pytest.raises(TypeError, match="client_name must be a str or None"):
        flip.send_handled_exception("trace", 3, MODEL_ID)
    flip.update_status(MODEL_ID, ModelStatus.TRAINING_STARTED)
    flip.send_metrics("site-1", MODEL_ID, "loss", 0.5, 1)
    flip.send_handled_exception("trace", None, MODEL_ID)
    flip.send_event(MODEL_ID, "ROUND_STARTED", 1)
    assert caplog.text.count("not delivered to the hub") == 4 and "hub-s3cr3t" not in caplog.text
    results = tmp_path / "results"
    results.mkdir()
    with pytest.raises(ResultsUploadError, match="PersistToS3AndCleanup"):
        flip.upload_results_to_s3(results, MODEL_ID)
    with pytest.raises(CleanupError, match="only after their upload to S3 was verified"):
        flip.cleanup(results)
    assert results.is_dir()


# ---------------------------------------------------------------------------------------------------------------
# 4. Each simulated site's own data
# ---------------------------------------------------------------------------------------------------------------
def _site_files(root: Path, site: str, accession: str) -> tuple[Path, Path]:
    csv = root / f"{site}.csv"
    csv.write_text(f"accession_id\n{accession}\n")
    (root / f"{site}-images" / accession).mkdir(parents=True)
    return csv, root / f"{site}-images"


def test_each_site_reads_its_own_data_others_the_dev_variables(tmp_path, monkeypatch):
    csv1, img1 = _site_files(tmp_path, "site-1", "S1-A")
    csv2, img2 = _site_files(tmp_path, "site-2", "S2-A")
    sites = parse_site_data([f"site-1={csv1}:{img1}", f"site-2={csv2}:{img2}"], ["site-1", "site-2", "site-3"])
    from flip.platform.site import site_data_json

    monkeypatch.setenv("FLIP_SITE_DATA", site_data_json(sites))
    flip = FLIP()
    with site_context("site-1"):
        assert current_site() == "site-1"
        assert list(flip.get_dataframe("p", "q")["accession_id"]) == ["S1-A"]
        assert flip.get_by_accession_number("p", "S1-A") == img1 / "S1-A"
    with site_context("site-2"):
        assert list(flip.get_dataframe("p", "q")["accession_id"]) == ["S2-A"]
    assert current_site() is None
    set_current_site("site-3")  # no entry, no DEV_DATAFRAME: the error names the site and the variables
    with pytest.raises(
        PlatformError,
        match=r"site 'site-3': FLIP_SITE_DATA has no entry for it and "
        r"DEV_DATAFRAME is not set",
    ):
        flip.get_dataframe("p", "q")
    with pytest.raises(PlatformError, match=r"site 'site-3'.* DEV_IMAGES_DIR is not set"):
        flip.get_by_accession_number("p", "X")
    shared_csv, shared_img = _site_files(tmp_path, "shared", "SH-A")
    monkeypatch.setenv("DEV_DATAFRAME", str(shared_csv))
    monkeypatch.setenv("DEV_IMAGES_DIR", str(shared_img))
    flip = FLIP()
    assert list(flip.get_dataframe("p", "q")["accession_id"]) == ["SH-A"]
    with site_context("site-1"):
        assert list(flip.get_dataframe("p", "q")["accession_id"]) == ["S1-A"]


def test_the_cli_takes_repeated_site_data(tmp_path):
    from flip.cli import build_parser

    args = build_parser().parse_args(
        ["simulate", "job", "--sites", "2", "--site-data", "site-1=a.csv:img1", "--site-data", "site-2=b.csv:img2"]
    )
    assert args.site_data == ["site-1=a.csv:img1", "site-2=b.csv:img2"]
    assert build_parser().parse_args(["simulate", "job"]).site_data is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("site-1", "must be SITE=CSV:IMAGES_DIR"),
        ("site-1={csv}", "must be SITE=CSV:IMAGES_DIR"),
        ("site-1={csv}:{img}:extra", "must be SITE=CSV:IMAGES_DIR"),
        ("=:", "must be SITE=CSV:IMAGES_DIR"),
        ("site-9={csv}:{img}", "site 'site-9', which is not simulated"),
        ("site-1={img}:{img}", "the CSV .* is not a file"),
        ("site-1={csv}:{csv}", "the image folder .* is not a folder"),
    ],
)
def test_bad_site_data_is_named(tmp_path, spec, message):
    csv, img = _site_files(tmp_path, "site-1", "A")
    with pytest.raises(ValueError, match=message):
        parse_site_data([spec.format(csv=csv, img=img)], ["site-1", "site-2"])


def test_simulate_passes_site_data_and_absolute_dev_paths_to_the_sites(tmp_path, monkeypatch):
    from flip.simulate import prepare_environment

    csv, img = _site_files(tmp_path, "site-2", "B")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEV_DATAFRAME", "site-2.csv")
    monkeypatch.setenv("DEV_IMAGES_DIR", "site-2-images")
    sites = parse_site_data([f"site-2={csv}:{img}"], ["site-1", "site-2"])
    with pytest.raises(ValueError, match=r"site_data names sites that are not simulated: \['site-2'\]"):
        prepare_environment(["site-1"], sites)
    prepare_environment(["site-1", "site-2"], sites)
    monkeypatch.chdir("/")  # as the simulator's site processes do
    settings = load_settings()
    assert settings.dev_dataframe == str(tmp_path.resolve() / "site-2.csv")
    assert settings.dev_data().images_root("site-1") == tmp_path.resolve() / "site-2-images"
    assert settings.site_data == sites and settings.dev_data().dataframe_path("site-2") == csv.resolve()


def test_site_data_paths_are_made_absolute(tmp_path, monkeypatch):
    _site_files(tmp_path, "site-1", "A")
    monkeypatch.chdir(tmp_path)
    sites = parse_site_data(
        [
            "site-1=site-1.csv:site-1-images",
        ],
        ["site-1"],
    )
    assert sites["site-1"].dataframe == tmp_path.resolve() / "site-1.csv"
    with pytest.raises(ValueError, match="gives site 'site-1' twice"):
        parse_site_data(["site-1=site-1.csv:site-1-images"] * 2, ["site-1"])


# ---------------------------------------------------------------------------------------------------------------
# 5. get_model_weights_diff, FLIPDataset, Utils
# ---------------------------------------------------------------------------------------------------------------
def _bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8, 2)
    )


def test_weights_diff_of_a_batchnorm_model_after_training():
    model = _bn_model()
    original = {k: v.cpu().numpy().copy() for k, v in model.state_dict().items()}  # as the server sends them
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 1, 4, 4)).sum().backward()
        optimizer.step()
    new = model.state_dict()
    dxo = get_model_weights_diff(original, new, 3)
    assert dxo.data_kind == DataKind.WEIGHT_DIFF and dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 3
    assert set(dxo.data) == set(new)
    steps = dxo.data["1.num_batches_tracked"]
    assert isinstance(steps, np.ndarray) and steps.dtype == np.int64 and int(steps) == 3
    for name, tensor in new.items():
        assert isinstance(dxo.data[name], np.ndarray)
        np.testing.assert_array_equal(dxo.data[name], tensor.numpy() - original[name])
    assert np.abs(dxo.data["4.weight"]).sum() > 0
    # the diff is a new array: changing the model afterwards does not change it
    before = dxo.data["4.bias"].copy()
    with torch.no_grad():
        model[4].bias.add_(1.0)
    np.testing.assert_array_equal(dxo.data["4.bias"], before)


def test_weights_diff_takes_tensors_or_arrays_on_either_side():
    old = {"w": torch.ones(2, 2), "n": np.array(5, dtype=np.int64)}
    new = {"w": np.full((2, 2), 3.0, dtype=np.float32), "n": torch.tensor(7)}
    dxo = get_model_weights_diff(old, new, np.int64(2))
    np.testing.assert_array_equal(dxo.data["w"], np.full((2, 2), 2.0))
    assert int(dxo.data["n"]) == 2 and dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 2
    bf16 = get_model_weights_diff({"w": np.zeros(2, np.float32)}, {"w": torch.ones(2, dtype=torch.bfloat16)}, 1)
    np.testing.assert_array_equal(bf16.data["w"], np.ones(2))


def test_weights_diff_refuses_what_cannot_be_a_diff():
    with pytest.raises(KeyError, match="'extra' is in the new weights but not in the original"):
        get_model_weights_diff({"w": np.zeros(2)}, {"w": np.ones(2), "extra": np.ones(1)}, 1)
    with pytest.raises(ValueError, match=r"'w' changed shape: \(3,\) before training, \(1,\) after"):
        get_model_weights_diff({"w": np.zeros(3)}, {"w": np.ones(1)}, 1)  # numpy would broadcast it silently
    for iterations in (-1, 1.5, float("nan"), "3", True):
        with pytest.raises(ValueError, match="iterations must be an integer >= 0"):
            get_model_weights_diff({"w": np.zeros(1)}, {"w": np.ones(1)}, iterations)


class SpleenDataset(FLIPDataset):
    """A tutorial-style subclass: its own argument set before the base constructor, NIfTI pairs per accession."""

    def __init__(self, flip, project_id, query, transform=None, val_split=0.5):
        self.val_split = val_split
        self.built = 0
        super().__init__(flip, project_id, query, transform)

    def _build_datalist(self, dataframe):
        self.built += 1
        items = []
        for accession in dataframe["accession_id"]:
            folder = self.flip.get_by_accession_number(self.project_id, accession, [ResourceType.NIFTI])
            for image in sorted(folder.rglob("input_*.nii.gz")):
                items.append({"image": str(image), "label": str(image).replace("/input_", "/label_")})
        return items


def test_flip_dataset_subclass_end_to_end(tmp_path, monkeypatch):
    import nibabel as nib
    from monai.data import DataLoader
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    images = tmp_path / "images"
    rows = []
    for i in range(3):
        scans = images / f"subject_{i}" / "scans"
        scans.mkdir(parents=True)
        for kind in ("input", "label"):
            nib.save(nib.Nifti1Image(np.full((4, 4, 2), i, dtype=np.float32), np.eye(4)), scans / f"{kind}_{i}.nii.gz")
        rows.append(f"subject_{i}")
    (tmp_path / "cohort.csv").write_text("accession_id\n" + "\n".join(rows) + "\n")
    monkeypatch.setenv("DEV_DATAFRAME", str(tmp_path / "cohort.csv"))
    monkeypatch.setenv("DEV_IMAGES_DIR", str(images))
    transform = Compose([LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"])])
    dataset = SpleenDataset(FLIP(), "p", "q", transform=transform, val_split=0.2)
    assert dataset.built == 1 and len(dataset) == 3 and dataset.val_split == 0.2
    assert dataset.data[1] == {
        "image": str(images / "subject_1/scans/input_1.nii.gz"),
        "label": str(images / "subject_1/scans/label_1.nii.gz"),
    }
    assert tuple(dataset[2]["image"].shape) == (1, 4, 4, 2) and float(dataset[2]["label"].max()) == 2.0
    clone = pickle.loads(pickle.dumps(dataset))  # what a spawned DataLoader worker receives
    assert clone.data == dataset.data and isinstance(clone.flip, LocalPlatform)
    batches = list(DataLoader(dataset, batch_size=2, num_workers=1))
    assert [tuple(b["image"].shape) for b in batches] == [(2, 1, 4, 4, 2), (1, 1, 4, 4, 2)]
    raw = SpleenDataset(FLIP(), "p", "q")  # no transform: the items as built
    assert raw[0] == raw.data[0]


def test_flip_dataset_is_abstract_and_checks_the_datalist(cohort):
    with pytest.raises(TypeError):
        FLIPDataset(FLIP(), "p", "q")

    class Broken(FLIPDataset):
        def _build_datalist(self, dataframe):
            return (row for row in dataframe["accession_id"])

    with pytest.raises(TypeError, match="Broken._build_datalist must return a list of dicts, got generator"):
        Broken(FLIP(), "p", "q")


def test_utils_as_flip():
    assert Utils.is_valid_uuid(MODEL_ID) and Utils.is_valid_uuid(MODEL_ID.replace("-", ""))
    assert Utils.is_valid_uuid("{" + MODEL_ID + "}") and not Utils.is_valid_uuid("nope")
    assert Utils.is_string_empty(" \t\n") and not Utils.is_string_empty(" a ")
    fingerprint = Utils.hash_for_log("ACC 00123")
    assert len(fingerprint) == 12 and all(c in "0123456789abcdef" for c in fingerprint)
    assert Utils.hash_for_log("  acc\t00123 ") == fingerprint != Utils.hash_for_log("ACC00123")
    assert fingerprint == hashlib.sha256(b"acc 00123").hexdigest()[:12]  # FLIP's rule: normalised, lower-cased


# ---------------------------------------------------------------------------------------------------------------
# 6. Metrics: send_metrics_value -> NVFlare's fed-event runner -> the server's parser
# ---------------------------------------------------------------------------------------------------------------
class Wire(FedEventRunner):
    """NVFlare's own fed-event runner (it stamps the origin and event type); what it would send is kept."""

    def __init__(self):
        super().__init__()
        self.sent: list[Shareable] = []

    def fire_and_forget_request(self, request, fl_ctx, targets=None, secure=False):
        self.sent.append(fobs.loads(fobs.dumps(request)))  # as it crosses the network


class RecordingEngine:
    """A site's engine: fire_event records the event and passes it to NVFlare's fed-event runner."""

    def __init__(self):
        self.fired: list[tuple[str, object, object, object]] = []
        self.wire = Wire()

    def fire_event(self, event_type, fl_ctx):
        self.fired.append(
            (
                event_type,
                fl_ctx.get_prop(FLContextKey.EVENT_DATA),
                fl_ctx.get_prop(FLContextKey.EVENT_SCOPE),
                fl_ctx.get_prop(FLContextKey.EVENT_ORIGIN),
            )
        )
        self.wire.handle_event(event_type, fl_ctx)


def site_context_of(engine, site="site-1") -> FLContext:
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, site, private=True, sticky=False)
    return fl_ctx


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (0.5, 0.5),
        (3, 3),
        (np.float32(0.25), 0.25),
        (np.float64(0.125), 0.125),
        (np.int64(7), 7),
        (torch.tensor(1.5), 1.5),
    ],
)
def test_send_metrics_value_fires_send_result_with_a_plain_metrics_dxo(value, plain):
    engine = RecordingEngine()
    send_metrics_value("Train loss (G)", value, site_context_of(engine), round=np.int64(4), flip=FLIP())
    [(event_type, data, scope, origin)] = engine.fired
    assert (event_type, scope, origin) == ("_send_result", EventScope.FEDERATION, "flip_client")
    dxo = from_shareable(data)
    seq = dxo.data.pop("seq")  # our addition: the site's order stamp
    assert dxo.data_kind == DataKind.METRICS and dxo.data == {"label": "Train loss (G)", "value": plain, "round": 4}
    assert type(dxo.data["value"]) is type(plain) and type(dxo.data["round"]) is int and type(seq) is int
    [sent] = engine.wire.sent
    assert sent.get_header(FedEventHeader.ORIGIN) == "site-1"
    assert parse_metric_event(sent, current_round=0).round == 4


def test_send_metrics_value_without_round_and_with_nan():
    engine = RecordingEngine()
    fl_ctx = site_context_of(engine)
    send_metrics_value("TEST_DICE", 0.9, fl_ctx)
    send_metrics_value(label="VAL-F1-SCORE", value=float("nan"), fl_ctx=fl_ctx, round=2)
    first, second = (from_shareable(e[1]).data for e in engine.fired)
    assert first.pop("seq") < second.pop("seq")  # sent in this order
    assert first == {"label": "TEST_DICE", "value": 0.9}
    assert second["label"] == "VAL-F1-SCORE" and math.isnan(second["value"])


def test_send_metrics_value_type_errors_as_flip():
    engine = RecordingEngine()
    with pytest.raises(TypeError, match="label must be a str, got int"):
        send_metrics_value(1, 0.5, site_context_of(engine))
    with pytest.raises(TypeError, match="fl_ctx must be an nvflare FLContext, got dict"):
        send_metrics_value("loss", 0.5, {})
    assert engine.fired == []


def test_send_metrics_value_never_fails_the_task(caplog):
    caplog.set_level(logging.INFO, logger="flip")
    send_metrics_value("loss", 0.5, FLContext())  # no engine: logged, returns
    engine = RecordingEngine()
    fl_ctx = site_context_of(engine)
    send_metrics_value("loss", [0.1, 0.2], fl_ctx)  # not a number: not sent (an event is not privacy-filtered)
    send_metrics_value("loss", np.ones(3), fl_ctx)
    send_metrics_value("loss", 0.5, fl_ctx, round=-1)
    send_metrics_value("loss", 0.5, fl_ctx, round=1.5)
    assert engine.fired == []
    assert "no engine" in caplog.text and caplog.text.count("not sent") == 5


def _event(site, data, kind=DataKind.METRICS):
    from nvflare.apis.dxo import DXO

    shareable = DXO(data_kind=kind, data=data).to_shareable()
    if site is not None:
        shareable.set_header(FedEventHeader.ORIGIN, site)
    return shareable


def test_parser_takes_a_metric_and_gives_the_servers_round_when_none_was_sent():
    event = parse_metric_event(_event("site-2", {"label": "TRAIN-F1-SCORE", "value": 0.75}), current_round=3)
    assert (event.site, event.label, event.value, event.round) == ("site-2", "TRAIN-F1-SCORE", 0.75, 3)
    assert parse_metric_event(_event("site-2", {"label": "x", "value": 1, "round": 9}), current_round=3).round == 9


@pytest.mark.parametrize(
    ("site", "data", "kind", "reason"),
    [
        ("site-1", {"label": "VAL_DICE", "value": float("nan")}, DataKind.METRICS, "'VAL_DICE' is not finite"),
        ("site-1", {"label": "VAL_DICE", "value": float("inf")}, DataKind.METRICS, "'VAL_DICE' is not finite"),
        ("site-1", {"label": "VAL_DICE", "value": "0.5"}, DataKind.METRICS, "of type str: expected a number"),
        ("site-1", {"label": "VAL_DICE", "value": [1.0]}, DataKind.METRICS, "of type list: expected a number"),
        ("site-1", {"label": "VAL_DICE", "value": True}, DataKind.METRICS, "of type bool: expected a number"),
        ("site-1", {"label": "", "value": 1.0}, DataKind.METRICS, "expected 1-128 printable characters"),
        ("site-1", {"label": "a\nb", "value": 1.0}, DataKind.METRICS, "expected 1-128 printable characters"),
        ("site-1", {"label": "x" * 129, "value": 1.0}, DataKind.METRICS, "expected 1-128 printable characters"),
        ("site-1", {"label": 3, "value": 1.0}, DataKind.METRICS, "a label of type int"),
        ("site-1", {"label": "x", "value": 1.0, "round": -1}, DataKind.METRICS, "round -1: expected an integer >= 0"),
        ("site-1", {"label": "x", "value": 1.0, "round": 1.5}, DataKind.METRICS, "round 1.5"),
        ("site-1", {"label": "x", "value": 1.0, "weights": [1]}, DataKind.METRICS, "expected the keys label, value"),
        ("site-1", {"value": 1.0}, DataKind.METRICS, "expected the keys label, value"),
        ("site-1", {"label": "x", "value": 1.0}, DataKind.WEIGHTS, "expected a METRICS DXO"),
        (None, {"label": "x", "value": 1.0}, DataKind.METRICS, "from an unknown site"),
        ("../site", {"label": "x", "value": 1.0}, DataKind.METRICS, "from an unknown site"),
    ],
)
def test_parser_drops_with_a_reason_naming_the_site(site, data, kind, reason):
    with pytest.raises(MetricDropped, match=reason) as err:
        parse_metric_event(_event(site, data, kind))
    if site == "site-1":
        assert "site 'site-1'" in str(err.value)


def test_parser_refuses_what_is_not_a_metrics_event():
    with pytest.raises(MetricDropped, match="its data is a dict, not a Shareable"):
        parse_metric_event({"label": "x"})
    empty = Shareable()
    empty.set_header(FedEventHeader.ORIGIN, "site-1")
    with pytest.raises(MetricDropped, match="site 'site-1' dropped: the event holds no DXO"):
        parse_metric_event(empty)


def test_log_keeps_repeated_labels_in_order_and_the_drop_reasons():
    log = MetricEventLog()
    values = [0.5, float("nan"), 0.7, 0.9]  # the xray trainer sends TRAIN-F1-SCORE once per class in a round
    log.extend([_event("site-1", {"label": "TRAIN-F1-SCORE", "value": v, "round": 3}) for v in values])
    log.add(_event("site-2", {"label": "TRAIN-F1-SCORE", "value": 0.1}), current_round=2)
    assert [(e.site, e.label, e.value, e.round) for e in log.events] == [
        ("site-1", "TRAIN-F1-SCORE", 0.5, 3),
        ("site-1", "TRAIN-F1-SCORE", 0.7, 3),
        ("site-1", "TRAIN-F1-SCORE", 0.9, 3),
        ("site-2", "TRAIN-F1-SCORE", 0.1, 2),
    ]
    assert log.dropped == [
        (
            "a metric from site 'site-1' dropped: metric 'TRAIN-F1-SCORE' is not finite (NaN, Inf "
            "or beyond the float range)"
        )
    ]


def test_handle_metrics_event_sends_to_the_platform(caplog):
    caplog.set_level(logging.INFO, logger="flip")
    flip = FLIP()
    handle_metrics_event(_event("site-1", {"label": "TEST_DICE", "value": 0.8}), 2, MODEL_ID, flip=flip)
    handle_metrics_event(_event("site-1", {"label": "TEST_DICE", "value": float("nan")}), 2, MODEL_ID, flip=flip)
    assert "send_metrics: site-1, model " + MODEL_ID + ", round 2: TEST_DICE = 0.8000" in caplog.text
    assert "metric 'TEST_DICE' is not finite" in caplog.text
    with pytest.raises(ValueError, match="model_id must be a UUID"):
        handle_metrics_event(_event("site-1", {"label": "x", "value": 1}), 2, "nope", flip=flip)
    with pytest.raises(TypeError, match="global_round must be an int"):
        handle_metrics_event(_event("site-1", {"label": "x", "value": 1}), "2", MODEL_ID, flip=flip)
    with pytest.raises(TypeError, match="event_data must be a Shareable"):
        handle_metrics_event({}, 2, MODEL_ID, flip=flip)


def test_a_sent_metric_arrives_as_the_server_reads_it():
    """The whole path: an app's value, NVFlare's runner stamping the site, the server's parser."""
    engine = RecordingEngine()
    fl_ctx = site_context_of(engine, "hospital-a")
    for v in (np.float32(0.5), np.float64(float("nan")), 2):
        send_metrics_value("TRAIN_LOSS", v, fl_ctx, round=1)
    log = MetricEventLog()
    log.extend(engine.wire.sent, current_round=0)
    assert [(e.site, e.value) for e in log.events] == [("hospital-a", 0.5), ("hospital-a", 2)]
    assert log.dropped == [
        (
            "a metric from site 'hospital-a' dropped: metric 'TRAIN_LOSS' is not finite (NaN, Inf "
            "or beyond the float range)"
        )
    ]
    assert FlipEvents.SEND_RESULT == engine.fired[0][0]
