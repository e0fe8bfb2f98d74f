"""Simulated sites share the machine's cores and get no app folder of an earlier job.

``run_simulator`` starts the sites with ``OMP_NUM_THREADS`` set to their share (cores // sites training at once, at
least 1), unless the caller set it. Before: every site's torch started one thread per core, and two sites training at
once on 2 cores took 4-6 s for a 0.3 s step (benchmarks/round_overhead.py at 100M parameters). It also keeps the app
folders and modules flip loaded earlier in this process out of the run (:func:`flip.simulate.isolated_path`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flip.nvflare.executors.user_code import load_module
from flip.simulate import THREADS_VAR, isolated_path, shared_cores, site_threads

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "threads, cores, share",
    [(1, 8, 8), (2, 8, 4), (3, 8, 2), (2, 2, 1), (3, 2, 1), (8, 2, 1), (1, 1, 1)],
)
def test_each_site_gets_its_share_of_the_cores(threads, cores, share):
    assert site_threads(threads, cores) == share


def test_the_share_counts_the_cores_this_process_may_use():
    assert site_threads(1) == len(os.sched_getaffinity(0))


def test_a_process_started_inside_runs_torch_on_its_share_and_the_variable_is_gone_after(monkeypatch):
    monkeypatch.delenv(THREADS_VAR, raising=False)
    with shared_cores(len(os.sched_getaffinity(0)) + 1) as value:
        assert value == "1"
        started = subprocess.run(
            [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
            capture_output=True,
            text=True,
            check=True,
        )
    assert started.stdout.strip() == "1"
    assert THREADS_VAR not in os.environ


def test_the_callers_own_setting_is_kept(monkeypatch):
    monkeypatch.setenv(THREADS_VAR, "3")
    with shared_cores(2) as value:
        assert value == "3" and os.environ[THREADS_VAR] == "3"
    assert os.environ[THREADS_VAR] == "3"


def test_a_simulator_run_hands_its_sites_no_app_folder_of_an_earlier_job(tmp_path):
    """NVFlare builds each simulated site's PYTHONPATH from this process's sys.path: an app folder flip imported
    user code from earlier (an in-process test, an earlier job) would come before the job's own custom/ folder, and
    the site would import that app's models.py. Before: a FLIP app run after the demo app's in-process tests
    trained the demo's model on its own images (``mat1 and mat2 shapes cannot be multiplied``)."""
    earlier = tmp_path / "earlier_app"
    earlier.mkdir()
    (earlier / "helper_of_an_earlier_app.py").write_text("VALUE = 1\n")
    load_module(earlier, "helper_of_an_earlier_app.py", "VALUE")
    assert str(earlier) in sys.path
    before = list(sys.path)
    with isolated_path():
        assert str(earlier) not in sys.path
        sys.path.append(str(tmp_path / "server_custom"))  # as NVFlare's simulator does with the job's custom/
    assert sys.path == before


def test_a_simulator_run_imports_no_module_of_an_earlier_job(tmp_path):
    """The simulator's server imports the job's ``models`` by name in this process: a ``models`` module flip loaded
    from an earlier app is out of ``sys.modules`` during the run and back after; what the run imported from its own
    custom/ folder is gone after. Before: a run after in-process tests of the demo app built the demo's model at the
    server ("parameter 'layers.1.weight' is not in the model")."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "module_of_an_earlier_app.py").write_text("VALUE = 1\n")
    module = load_module(earlier, "module_of_an_earlier_app.py", "VALUE")
    job_custom = tmp_path / "job_custom"
    job_custom.mkdir()
    (job_custom / "module_of_this_job.py").write_text("VALUE = 2\n")
    with isolated_path():
        assert "module_of_an_earlier_app" not in sys.modules
        sys.path.append(str(job_custom))  # as NVFlare's simulator does
        __import__("module_of_this_job")
    assert sys.modules["module_of_an_earlier_app"] is module
    assert "module_of_this_job" not in sys.modules and str(job_custom) not in sys.path
