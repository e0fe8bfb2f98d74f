"""Simulator runs shared by the integration tests: each job runs once per session."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flip.demo.data import write_cohorts
from flip.platform.dev import LocalPlatform
from flip.simulate import run_simulator
from tests.conftest import REPO, environ


@dataclass
class SimRun:
    """What one simulator run left behind."""

    rc: int
    seconds: float
    sites: list[str]
    local_dir: Path
    workspace: Path
    job_dir: Path
    env: dict = field(default_factory=dict)

    @property
    def platform(self) -> LocalPlatform:
        return LocalPlatform(self.local_dir)

    def statuses(self, model_id: str) -> list[dict]:
        return self.platform.read_statuses(model_id)

    def log_text(self, site: str) -> str:
        return (self.workspace / site / "log.txt").read_text()


def simulate(tmp: Path, job_dir: Path, weed, sites: list[str], threads: int, extra_env: dict | None = None,
             cohorts_ready: bool = False) -> SimRun:
    """Write the sites' cohorts (unless ready), run ``job_dir`` in the simulator against ``weed``."""
    local_dir = tmp / "flip"
    if not cohorts_ready:
        write_cohorts(local_dir, sites)
    env = {**weed.env, "FLIP_LOCAL_DIR": str(local_dir), "FLIP_ENV": "dev", **(extra_env or {})}
    started = time.monotonic()
    with environ(**env):
        rc = run_simulator(job_dir, tmp / "workspace", sites=sites, threads=threads)
    return SimRun(rc, time.monotonic() - started, sites, local_dir, tmp / "workspace", job_dir, env)


@pytest.fixture(scope="session")
def standard_run(tmp_path_factory, weed) -> SimRun:
    """jobs/standard exactly as checked in: 3 sites on 2 threads (more sites than threads)."""
    tmp = tmp_path_factory.mktemp("standard")
    job = tmp / "standard"
    shutil.copytree(REPO / "jobs" / "standard", job)
    return simulate(tmp, job, weed, ["site-1", "site-2", "site-3"], threads=2)

