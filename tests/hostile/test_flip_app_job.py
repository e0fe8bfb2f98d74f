"""Hostile inputs to ``flip job create`` (flip/jobs/flip_app.py): each is refused naming the value and what is
allowed, before anything is written. And a FLIP app's broken entry class is the cause a site names.

Each test fails on the code before this change: ``flip job create`` and flip.jobs.flip_app did not exist (the
import fails), and the checks below are its own (paths in config.json, links out of the app folder, the project,
query, model id, job and site names).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal

from flip.constants import FlipMeta
from flip.errors import AppError
from flip.jobs import DEMO_APP_DIR
from flip.jobs.flip_app import create_job, inspect_app, plan_job
from flip.nvflare import executors
from flip.nvflare.executors.user_code import build_model
from tests.apps.data import DICOM_APP, EVALUATION_APP
from tests.unit.conftest import FakeEngine

pytestmark = pytest.mark.unit


def _app(tmp_path: Path, source: Path = DICOM_APP) -> Path:
    target = tmp_path / "app"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def _evaluation_app(tmp_path: Path, models: object) -> Path:
    app = _app(tmp_path, EVALUATION_APP)
    torch.save({}, app / "model.pt")
    config = json.loads((app / "config.json").read_text())
    config["models"] = models
    (app / "config.json").write_text(json.dumps(config))
    return app


@pytest.mark.parametrize("checkpoint", ["../../etc/passwd", "/etc/passwd", "sub/model.pt", "model.pt\n", ""])
def test_a_checkpoint_outside_the_app_folder_is_refused(tmp_path, checkpoint):
    app = _evaluation_app(tmp_path, {"unet": {"checkpoint": checkpoint, "path": "unet"}})
    with pytest.raises(
        AppError,
        match=r"config\.json models\['unet'\]: checkpoint .* is invalid: expected 1-128 "
        r"letters.*\(the checkpoint is a file name in the app folder\)",
    ):
        inspect_app(app)


@pytest.mark.parametrize(
    "models, error",
    [
        ({}, r"config\.json must have \"models\": .* for an evaluation, got dict"),
        ([["unet", "model.pt"]], r"config\.json must have \"models\": .* for an evaluation, got list"),
        (
            {"unet": "model.pt"},
            r"models\['unet'\] must be an object with exactly the keys \['checkpoint', 'path'\], got str",
        ),
        (
            {"unet": {"checkpoint": "model.pt", "path": "unet", "url": "http://x"}},
            (
                r"models\['unet'\] must be an object with exactly the keys \['checkpoint', 'path'\], got \['checkpoint', "
                r"'path', 'url'\]"
            ),
        ),
        (
            {"../unet": {"checkpoint": "model.pt", "path": "unet"}},
            r"models\['\.\./unet'\]: model name '\.\./unet' is invalid",
        ),
        (
            {"unet": {"checkpoint": "model.pt", "path": "resnet"}},
            r"config\.json \"models\" names path\(s\) \['resnet'\] that models\.model_paths lacks \(it has \['unet'\]\)",
        ),
    ],
)
def test_a_bad_models_entry_is_named(tmp_path, models, error):
    with pytest.raises(AppError, match=error):
        inspect_app(_evaluation_app(tmp_path, models))


def test_an_evaluation_whose_models_py_has_no_model_paths_is_refused(tmp_path):
    app = _evaluation_app(tmp_path, {"unet": {"checkpoint": "model.pt", "path": "unet"}})
    (app / "models.py").write_text("def get_model():\n    return None\n")
    with pytest.raises(
        AppError,
        match=r"models\.py defines no model_paths: an evaluation loads each checkpoint into "
        r"models\.model_paths\[<path>\]",
    ):
        inspect_app(app)


def test_a_file_linking_out_of_the_app_folder_is_refused(tmp_path):
    """A link to e.g. ~/.aws/credentials would be copied into the job and deployed to every site."""
    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key = x\n")
    app = _app(tmp_path)
    (app / "helpers.json").symlink_to(secret)
    with pytest.raises(
        AppError,
        match=r"helpers\.json in .* link\(s\) to outside the app folder: a job carries the "
        "app's own files only",
    ):
        create_job(app, tmp_path / "job")
    assert not (tmp_path / "job").exists()
    (app / "helpers.json").unlink()
    (app / "alias.py").symlink_to(app / "scores.py")  # a link inside the folder is the app's own file
    assert inspect_app(app).job_type == "standard"


@pytest.mark.parametrize(
    "arguments, error",
    [
        ({"project_id": "p\nq"}, r"project_id must not contain control characters, got 'p\\nq'"),
        ({"project_id": 7}, "project_id must be a string, got 7"),
        ({"query": None}, "query must be a string of at most 100000 characters, got NoneType"),
        ({"query": "x" * 100_001}, "query must be a string of at most 100000 characters, got str of 100001"),
        ({"model_id": "not-a-uuid"}, "model_id must be a UUID"),
        ({"min_clients": 0}, "min_clients must be an integer >= 1, got 0"),
        ({"min_clients": True}, "min_clients must be an integer >= 1, got True"),
        ({"rounds": float("nan")}, "rounds must be an integer >= 1, got nan"),
        ({"name": "../job"}, r"job name '\.\./job' is invalid"),
    ],
)
def test_a_bad_argument_is_named(arguments, error):
    with pytest.raises(ValueError, match=error):
        plan_job(DICOM_APP, **arguments)


def test_a_multiline_query_is_a_query(tmp_path):
    assert plan_job(DICOM_APP, query="SELECT accession_id,\n\tlabel\r\nFROM t;").query.count("\n") == 2


def test_bad_site_names_of_an_evaluation_are_refused(tmp_path):
    app = _evaluation_app(tmp_path, {"unet": {"checkpoint": "model.pt", "path": "unet"}})
    with pytest.raises(ValueError, match=r"site name '\.\./x' is invalid"):
        plan_job(app, sites=["site-1", "../x"])
    with pytest.raises(ValueError, match="site names must be distinct"):
        plan_job(app, sites=["site-1", "site-1"])


def test_an_app_folder_that_is_a_file_or_not_utf8_python_is_refused(tmp_path):
    with pytest.raises(AppError, match="is not a folder"):
        inspect_app(DICOM_APP / "trainer.py")
    app = _app(tmp_path)
    (app / "trainer.py").write_bytes(b"\xff\xfe class FLIP_TRAINER: pass\n")
    with pytest.raises(AppError, match=r"trainer\.py cannot be read as Python source: UnicodeDecodeError"):
        inspect_app(app)


def test_a_job_folder_name_that_is_not_a_path_name_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match=r"job name 'my job' is invalid"):
        create_job(DICOM_APP, tmp_path / "my job")
    assert not (tmp_path / "my job").exists() and not list(tmp_path.glob(".flip-job-*"))


@pytest.mark.parametrize(
    "executor, file_name, class_name",
    [("RUN_TRAINER", "trainer.py", "FLIP_TRAINER"), ("RUN_VALIDATOR", "validator.py", "FLIP_VALIDATOR")],
)
def test_a_missing_entry_class_is_the_cause_named_even_without_data(
    tmp_path, monkeypatch, executor, file_name, class_name
):
    """A misnamed entry class at a site without plain-contract images (a FLIP app's data comes through
    get_dataframe): the old RUN_TRAINER/RUN_VALIDATOR fetched the site's images first and failed with "no cohort
    for site 'site-1'", hiding the cause; the class is now loaded first and named."""
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))  # no cohorts/ there
    (tmp_path / "site").mkdir()
    engine = FakeEngine(tmp_path / "site", "site-1")
    custom = tmp_path / "site" / "job-1" / "app_site-1" / "custom"
    shutil.copytree(DEMO_APP_DIR, custom, ignore=shutil.ignore_patterns("__pycache__"))
    (custom / file_name).write_text((custom / file_name).read_text().replace(f"class {class_name}", "class Renamed"))
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the executor puts custom/ on the path: undone after
    for name in ("trainer", "validator", "models", "digits_data"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    weights = {k: v.numpy() for k, v in build_model(custom).state_dict().items()}
    runner = getattr(executors, executor)()
    reply = runner.execute(runner.tasks[0], DXO(DataKind.WEIGHTS, data=weights).to_shareable(), fl_ctx, Signal())
    for name in ("trainer", "validator", "models", "digits_data"):
        sys.modules.pop(name, None)
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    reason = reply.get_header(FlipMeta.ERROR_REASON)
    assert f"custom/{file_name} does not define {class_name}" in reason and "cohort" not in reason, reason
