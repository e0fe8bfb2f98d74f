"""Simulator runs shared by the integration tests: each job runs once per session."""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest
import torch

from flip.demo.data import write_cohorts
from flip.jobs import DEMO_APP_DIR
from flip.platform.dev import LocalPlatform
from flip.simulate import run_simulator
from flip.storage.manifest import verify_run
from tests.conftest import REPO, environ


@dataclass
class SimRun:
    """What one simulator run left behind."""

    rc: int
    sites: list[str]
    local_dir: Path
    workspace: Path
    env: dict = field(default_factory=dict)

    @property
    def platform(self) -> LocalPlatform:
        return LocalPlatform(self.local_dir)

    def statuses(self, model_id: str) -> list[dict]:
        return self.platform.read_statuses(model_id)

    def log_text(self, site: str) -> str:
        return (self.workspace / site / "log.txt").read_text()


def simulate(
    tmp: Path,
    job_dir: Path,
    weed,
    sites: list[str],
    threads: int,
    extra_env: dict | None = None,
    cohorts_ready: bool = False,
) -> SimRun:
    """Write the sites' cohorts (unless ready), run ``job_dir`` in the simulator against ``weed``."""
    local_dir = tmp / "flip"
    if not cohorts_ready:
        write_cohorts(local_dir, sites)
    env = {**weed.env, "FLIP_LOCAL_DIR": str(local_dir), "FLIP_ENV": "dev", **(extra_env or {})}
    with environ(**env):
        rc = run_simulator(job_dir, tmp / "workspace", sites=sites, threads=threads)
    return SimRun(rc, sites, local_dir, tmp / "workspace", env)


def run_objects(weed, prefix: str, bucket: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """Verify the run under ``prefix`` (in ``bucket``, default weed's) against its manifest, then fetch every object
    the manifest lists."""
    client, bucket = weed._client(), bucket or weed.bucket
    manifest = verify_run(client, bucket, prefix)
    return manifest, {
        e["key"]: client.get_object(Bucket=bucket, Key=prefix + e["key"])["Body"].read() for e in manifest["objects"]
    }


@functools.cache
def load_app_module(app_dir: Path, name: str) -> ModuleType:
    """``app_dir/<name>.py`` loaded by path (once), ``app_dir`` importable while it loads (as a job's custom/)."""
    sys.path.insert(0, str(app_dir))
    try:
        spec = importlib.util.spec_from_file_location(f"_test_{app_dir.name}_{name}", app_dir / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(app_dir))


def direct_evaluation(state: dict, cohort: Path, *, val_only: bool = False) -> dict:
    """The demo model with ``state`` evaluated here, without NVFlare, on a site's images (``val_only``: only the
    validation split, as the validator takes it): ``{"accuracy", "loss", "num_samples"}``."""
    data = load_app_module(DEMO_APP_DIR, "digits_data")
    images, labels = data.load_folder(cohort)
    if val_only:
        _, _, images, labels = data.train_val_split(images, labels)
    model = load_app_module(DEMO_APP_DIR, "models").get_model()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    return {
        "accuracy": (logits.argmax(1) == labels).float().mean().item(),
        "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
        "num_samples": len(labels),
    }


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory, weed) -> SimRun:
    """jobs/standard exactly as checked in: 3 sites on 2 threads (more sites than threads)."""
    tmp = tmp_path_factory.mktemp("standard")
    job = tmp / "standard"
    shutil.copytree(REPO / "jobs" / "standard", job)
    return simulate(tmp, job, weed, ["site-1", "site-2", "site-3"], threads=2)
