"""POC end to end, as a hospital network would use it: provisioned kits with FLIP's builder, the system started
with `nvflare poc start`, jobs submitted through the FLARE API (what the admin console's `submit_job` does) and
once with `nvflare job submit`, the status lifecycle and the verified model checked, the system stopped, and no
process of it left behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flip.demo.data import write_cohorts
from flip.jobs import DEFAULT_MODEL_ID, DEMO_APP_DIR, write_job
from flip.platform.dev import LocalPlatform
from flip.provisioning import project_config, render_project
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from flip.storage.registry import ModelRegistry
from flip.storage.weed import free_ports
from tests.conftest import REPO, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.s3]
SITES = ["site-1", "site-2"]
ADMIN = "admin@flip.org"
ADMIN_CLIENT = Path(__file__).with_name("admin_client.py")
JOB_TIMEOUT = 240


class Poc:
    """A POC system in a temporary HOME and workspace, with FLIP's settings in its processes' environment."""

    def __init__(self, root: Path, weed):
        self.root = root
        self.local_dir = root / "flip"
        fed_port, admin_port = free_ports(2)
        self.env = clean_env("FLIP_", "AWS_", "NVFLARE_")
        self.env.update(weed.env)
        self.env.update(
            {
                "HOME": str(root / "home"),
                "NVFLARE_POC_WORKSPACE": str(root / "poc"),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "FLIP_ENV": "dev",
                "FLIP_LOCAL_DIR": str(self.local_dir),
            }
        )
        (root / "home").mkdir()
        project = root / "project.yml"
        project.write_text(render_project(project_config(SITES, fed_learn_port=fed_port, admin_port=admin_port)))
        self.nvflare("poc", "prepare", "-i", str(project), "--force")
        self.prod = root / "poc" / "flip" / "prod_00"
        write_cohorts(self.local_dir, SITES)

    def nvflare(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("nvflare")), *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert result.returncode == 0, f"nvflare {' '.join(args)}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
        return result.stdout

    def pids(self) -> list[int]:
        found = []
        for name in ("pid.fl", "daemon_pid.fl"):
            for path in self.prod.glob(f"*/{name}"):
                text = path.read_text().strip()
                if text.isdigit():
                    found.append(int(text))
        return found

    def statuses(self, run_id: str) -> list[dict]:
        """The status records of the default model's run ``run_id`` (a job id), in the order they were sent."""
        return [s for s in LocalPlatform(self.local_dir).read_statuses(DEFAULT_MODEL_ID) if s["run_id"] == run_id]

    def admin(self, command: str, target: str) -> dict:
        """Submit-and-monitor (``run``) or monitor (``wait``) through the FLARE API, in its own process."""
        result = subprocess.run(
            [sys.executable, str(ADMIN_CLIENT), str(self.prod / ADMIN), ADMIN, command, target, str(JOB_TIMEOUT)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT + 120,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def stop(self) -> list[int]:
        """`nvflare poc stop`, then wait for every process it started; return those still alive."""
        self.nvflare("poc", "stop", timeout=120)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(_alive(p) for p in self.started):
            time.sleep(0.5)
        self.stopped = True
        return [p for p in self.started if _alive(p)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def poc(tmp_path_factory, weed):
    system = Poc(tmp_path_factory.mktemp("poc"), weed)
    system.nvflare("poc", "start", timeout=120)
    system.started = system.pids()
    system.stopped = False
    try:
        yield system
    finally:
        if not system.stopped:
            system.stop()
        for pid in system.started:  # whatever happened above, leave nothing running
            if _alive(pid):
                os.kill(pid, 9)


def _run(poc, job_folder: Path) -> tuple[str, dict]:
    result = poc.admin("run", str(job_folder))
    assert result["finished"], f"job {result['job_id']} did not finish in {JOB_TIMEOUT} s"
    return result["job_id"], result


@pytest.fixture(scope="module")
def job_via_api(poc, tmp_path_factory):
    """A standard job submitted and monitored through the FLARE API, whose own PercentilePrivacy is switched off."""
    job = write_job("standard", tmp_path_factory.mktemp("off_job"), num_rounds=1)
    config_path = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(config_path.read_text())
    for entry in config["task_result_filters"]:
        for flt in entry["filters"]:
            flt["args"]["off"] = True
    config_path.write_text(json.dumps(config, indent=2))
    return _run(poc, job)


def test_a_job_via_the_flare_api_lands_a_verified_model(poc, job_via_api, weed):
    job_id, meta = job_via_api
    assert meta["status"] == "FINISHED:COMPLETED"
    statuses = poc.statuses(job_id)
    assert [s["status"] for s in statuses] == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    client = weed._client()
    manifest = verify_run(client, weed.bucket, run_prefix(DEFAULT_MODEL_ID, job_id))
    assert manifest["job_id"] == job_id and manifest["sites"] == SITES
    record = ModelRegistry(client, weed.bucket).run(DEFAULT_MODEL_ID, job_id)
    assert record.verified


def test_sites_enforce_their_privacy_policy_whatever_the_job_says(poc, job_via_api, weed):
    """The job's own PercentilePrivacy is off, yet it sent only filtered updates: the site's scope applies."""
    job_id, _ = job_via_api
    prefix = run_prefix(DEFAULT_MODEL_ID, job_id)
    metrics = json.loads(weed._client().get_object(Bucket=weed.bucket, Key=prefix + "metrics.json")["Body"].read())
    assert metrics["rounds"]
    for entry in metrics["rounds"]:
        for site in SITES:
            applied = entry["privacy"][site]
            assert applied[0]["filter"] == "PercentilePrivacy" and not applied[0].get("off")  # the site's scope
            assert applied[0]["parts"]["update"]["shared"] < 0.95
            assert applied[1] == {"filter": "PercentilePrivacy", "off": True}  # the job's own, switched off
    for site in SITES:
        log = (poc.prod / site / job_id / "log.txt").read_text()
        assert "privacy filter is OFF" in log and "update: percentile 10.0 threshold" in log


def test_nvflare_job_submit_runs_the_job_folder_as_it_is(poc, weed):
    out = poc.nvflare(
        "--format",
        "json",
        "job",
        "submit",
        "-j",
        str(REPO / "jobs" / "standard"),
        "--startup-kit",
        str(poc.prod / ADMIN),
    )
    job_id = json.loads(out.strip().splitlines()[-1])["data"]["job_id"]
    result = poc.admin("wait", job_id)
    assert result["finished"] and result["status"] == "FINISHED:COMPLETED"
    statuses = [s["status"] for s in poc.statuses(job_id)]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]
    manifest = verify_run(weed._client(), weed.bucket, run_prefix(DEFAULT_MODEL_ID, job_id))
    assert manifest["rounds"] == 3 and manifest["sites"] == SITES  # jobs/standard as checked in


def test_a_job_without_its_trainer_fails_naming_the_file_and_keeps_everything(poc, tmp_path_factory, weed):
    """Fails clearly and early, with nothing uploaded and nothing deleted at the server, the sites' images still
    removed; the site's reason reaches the server's log, read through the admin API."""
    app = tmp_path_factory.mktemp("broken_app") / "app"
    shutil.copytree(DEMO_APP_DIR, app, ignore=shutil.ignore_patterns("__pycache__", "trainer.py"))
    job = write_job("standard", tmp_path_factory.mktemp("broken_job"), num_rounds=1, app_dir=app)
    job_id, result = _run(poc, job)
    assert result["status"] != "FINISHED:COMPLETED"
    logs = result["logs"]["logs"]
    assert "custom/trainer.py not found" in logs["server"]  # the site's reason, named in the server's log
    statuses = poc.statuses(job_id)
    assert [s["status"] for s in statuses] == ["INITIATED", "PREPARED", "TRAINING_STARTED", "ERROR"]
    reason = statuses[-1]["reason"]
    assert "custom/trainer.py not found" in reason and "FLIP_TRAINER" in reason
    assert "Traceback" not in reason
    listing = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=f"{DEFAULT_MODEL_ID}/{job_id}/")
    assert listing.get("KeyCount", 0) == 0  # nothing uploaded
    # nothing deleted by flip (NVFlare itself then archives the server's run folder into its job store)
    assert "the run failed: nothing was uploaded and nothing was deleted" in logs["server"]
    for site in SITES:
        assert (poc.local_dir / "cohorts" / site).is_dir()
        assert not (poc.local_dir / "images" / site / job_id).exists(), site


def test_a_bad_component_argument_fails_at_job_start_naming_it(poc, tmp_path_factory):
    job = write_job("standard", tmp_path_factory.mktemp("bad_arg_job"), num_rounds=1)
    config_path = job / "app" / "config" / "config_fed_client.json"
    config = json.loads(config_path.read_text())
    config["task_result_filters"][0]["filters"][0]["args"]["percentile"] = 150
    config_path.write_text(json.dumps(config, indent=2))
    job_id, result = _run(poc, job)
    assert result["status"] != "FINISHED:COMPLETED"
    # the error is in each site's own log, and (sites provisioned by flip keep their logs) nowhere else
    local_logs = [p.read_text() for p in poc.prod.glob(f"site-*/{job_id}/log.txt")]
    assert any("percentile must be a finite number in [0, 100], got 150" in text for text in local_logs), local_logs
    assert not result["site_error_logs"], "a site's error log reached the server though the site did not opt in"


def test_an_aborted_run_ends_stopped(poc, tmp_path_factory, weed):
    job = write_job("standard", tmp_path_factory.mktemp("long_job"), num_rounds=200)
    job_id = poc.admin("submit", str(job))["job_id"]
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline and "TRAINING_STARTED" not in [s["status"] for s in poc.statuses(job_id)]:
        time.sleep(1)
    poc.admin("abort", job_id)
    result = poc.admin("wait", job_id)
    assert result["finished"] and "ABORTED" in result["status"]
    statuses = poc.statuses(job_id)
    assert [s["status"] for s in statuses] == ["INITIATED", "PREPARED", "TRAINING_STARTED", "STOPPED"]
    assert statuses[-1]["reason"] == "the run was aborted"
    listing = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=f"{DEFAULT_MODEL_ID}/{job_id}/")
    assert listing.get("KeyCount", 0) == 0  # an aborted run uploads nothing


def test_stopping_the_poc_leaves_no_process(poc):
    """Last in this module: stop the system and check that every process it started is gone."""
    assert len(poc.started) >= 2 * (len(SITES) + 1), f"expected a daemon and a process per participant: {poc.started}"
    assert all(_alive(p) for p in poc.started)
    assert poc.stop() == []
