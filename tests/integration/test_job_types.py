"""FedOpt and multi-stage end to end in the simulator, results verified in S3 (the evaluation-only job, which evaluates
the standard run's model, is in test_standard_job.py: one module per simulator run it needs)."""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
import torch

from flip.constants import RunFile
from flip.demo.data import holdout_accuracy
from flip.jobs import DEFAULT_MODEL_ID, MULTISTAGE_APP_DIR
from flip.storage.layout import run_prefix
from tests.conftest import REPO
from tests.integration.conftest import load_app_module, run_objects, simulate

pytestmark = [pytest.mark.simulator, pytest.mark.s3]
SITES = ["site-1", "site-2"]


_uploaded: dict[tuple, tuple[dict, dict[str, bytes]]] = {}


def _run_objects(weed, model_id, run):
    """The final run's manifest and objects, verified and fetched once per run (several tests read each run)."""
    key = (model_id, run.workspace)
    if key not in _uploaded:
        final = run.statuses(model_id)[-1]
        _uploaded[key] = run_objects(weed, run_prefix(model_id, final["run_id"]))
    return _uploaded[key]


# -- FedOpt ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fed_opt_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("fed_opt")
    job = tmp / "fed_opt"
    shutil.copytree(REPO / "jobs" / "fed_opt", job)
    return simulate(tmp, job, weed, SITES, threads=2)


def test_fed_opt_moves_the_global_model_every_round_as_the_optimizer_predicts(fed_opt_run, weed):
    assert fed_opt_run.rc == 0
    _, objects = _run_objects(weed, DEFAULT_MODEL_ID, fed_opt_run)
    config = json.loads((REPO / "jobs/fed_opt/app/config/config_fed_server.json").read_text())
    (generator,) = [c for c in config["components"] if c["id"] == "shareable_generator"]
    lr = generator["args"]["lr"]
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    assert len(rounds) == 3
    steps = [r["server"] for r in rounds]
    assert all(s["optimizer"] == "sgd" and s["step_norm"] > 0 for s in steps)  # the global model moves every round
    # round 1: the momentum buffer is the first pseudo-gradient, so the step is exactly lr x the averaged update
    assert steps[0]["step_norm"] == pytest.approx(lr * steps[0]["update_norm"], rel=1e-6)
    assert lr != 1.0  # ... which is not FedAvg's step (lr 1)
    # later rounds carry momentum: no longer lr x the update
    assert steps[1]["step_norm"] != pytest.approx(lr * steps[1]["update_norm"], rel=1e-3)


def test_fed_opt_still_converges(fed_opt_run, weed):
    _, objects = _run_objects(weed, DEFAULT_MODEL_ID, fed_opt_run)
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    assert holdout_accuracy(state) >= 0.8


# -- multi-stage -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def multi_stage_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("multi_stage")
    job = tmp / "multi_stage"
    shutil.copytree(REPO / "jobs" / "multi_stage", job)
    return simulate(tmp, job, weed, SITES, threads=2)


def test_both_stages_run_their_rounds_in_order(multi_stage_run, weed):
    assert multi_stage_run.rc == 0
    assert multi_stage_run.statuses(DEFAULT_MODEL_ID)[-1]["status"] == "RESULTS_UPLOADED"
    _, objects = _run_objects(weed, DEFAULT_MODEL_ID, multi_stage_run)
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    assert [r["stage"] for r in rounds] == ["denoise", "denoise", "classify", "classify"]
    assert all("denoise_loss" in m for r in rounds[:2] for m in r["sites"].values())
    assert all("accuracy" in m for r in rounds[2:] for m in r["sites"].values())


def test_each_stage_is_filtered_with_its_own_threshold_at_every_site(multi_stage_run):
    for site in SITES:
        log = multi_stage_run.log_text(site)
        for stage in ("denoise", "classify"):
            lines = re.findall(rf"stage {stage}: percentile 10 threshold \S+, shared ([\d.]+)% of (\d+) values", log)
            assert len(lines) == 2, (site, stage)
            assert all(0 < float(shared) <= 90.0 for shared, _ in lines)
        sizes = {
            stage: {
                int(n)
                for _, n in re.findall(
                    rf"stage {stage}: percentile \S+ threshold \S+, shared "
                    rf"([\d.]+)% of (\d+) values",
                    log,
                )
            }
            for stage in ("denoise", "classify")
        }
        assert sizes["denoise"] != sizes["classify"]  # each update held only its own stage's parameters


def test_the_final_model_holds_both_trained_stages(multi_stage_run, weed):
    _, objects = _run_objects(weed, DEFAULT_MODEL_ID, multi_stage_run)
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    initial = load_app_module(MULTISTAGE_APP_DIR, "models").get_model().state_dict()
    assert set(state) == set(initial)
    for prefix in ("denoiser.", "classifier."):
        changed = [k for k in state if k.startswith(prefix) and not torch.equal(state[k], initial[k])]
        assert changed, f"no {prefix} parameter changed"
    validation = json.loads(objects[RunFile.CROSS_VAL_RESULTS])
    assert all(v[RunFile.SERVER_MODEL]["accuracy"] > 0.5 for v in validation.values())
