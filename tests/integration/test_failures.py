"""Runs that must fail: clearly, early, with nothing uploaded and nothing deleted."""

from __future__ import annotations

import shutil
import uuid

import pytest

from flip.jobs import DEMO_APP_DIR, write_job
from tests.integration.conftest import simulate

pytestmark = [pytest.mark.simulator, pytest.mark.s3]


@pytest.fixture(scope="module")
def missing_trainer_run(tmp_path_factory, weed):
    """The standard job whose custom/ folder lacks trainer.py."""
    tmp = tmp_path_factory.mktemp("no_trainer")
    app = tmp / "app"
    shutil.copytree(DEMO_APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "trainer.py"))
    model_id = str(uuid.uuid4())
    job = write_job("standard", tmp / "jobs", model_id=model_id, num_rounds=2, app_dir=app)
    return model_id, simulate(tmp, job, weed, ["site-1", "site-2"], threads=2)


def test_missing_trainer_fails_the_run_naming_the_file(missing_trainer_run):
    model_id, run = missing_trainer_run
    assert run.rc != 0
    statuses = run.statuses(model_id)
    assert [s["status"] for s in statuses] == ["INITIATED", "PREPARED", "TRAINING_STARTED", "ERROR"]
    reason = statuses[-1]["reason"]
    assert "custom/trainer.py not found" in reason and "FLIP_TRAINER" in reason
    assert "Traceback" not in reason


def test_failed_run_uploads_nothing_and_keeps_its_workspace(missing_trainer_run, weed):
    model_id, run = missing_trainer_run
    listing = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=model_id)
    assert listing.get("KeyCount", 0) == 0
    assert (run.workspace / "server" / "simulate_job" / "app_server" / "config").is_dir()


def test_failed_run_still_removes_the_sites_images(missing_trainer_run):
    _, run = missing_trainer_run
    for site in run.sites:
        assert not (run.local_dir / "images" / site / "simulate_job").exists(), site


@pytest.fixture(scope="module")
def prod_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("prod")
    job = write_job("standard", tmp / "jobs", model_id=str(uuid.uuid4()), num_rounds=1)
    return simulate(tmp, job, weed, ["site-1", "site-2"], threads=2, extra_env={"FLIP_ENV": "prod"})


def test_prod_without_hub_settings_fails_at_job_start_naming_them(prod_run):
    assert prod_run.rc != 0
    server_log = (prod_run.workspace / "server" / "log.txt").read_text()
    assert ("FLIP_ENV=prod: the server needs FLIP_API_INTERNAL_URL (or FLIP_HUB_URL) and INTERNAL_SERVICE_KEY (or "
            "FLIP_HUB_API_KEY, or INTERNAL_SERVICE_KEY_FILE) to reach the hub") in server_log
    assert "round 1/1 started" not in server_log  # no training happened
