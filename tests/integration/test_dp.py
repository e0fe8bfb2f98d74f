"""Client-level differential privacy in a real run: ε accounted every round, and the budget stops training cleanly."""

from __future__ import annotations

import io
import json
import re
import uuid

import pytest
import torch

from flip.constants import RunFile
from flip.jobs import write_job
from flip.privacy.gaussian import epsilon_after
from flip.storage.layout import run_prefix
from tests.integration.conftest import run_objects, simulate

pytestmark = [pytest.mark.simulator, pytest.mark.s3]
SITES = ["site-1", "site-2"]
Z = 2.0


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory, weed):
    """Four rounds planned, but each site's budget only allows two releases; an ensemble is asked for."""
    tmp = tmp_path_factory.mktemp("dp_budget")
    model_id = str(uuid.uuid4())
    budget = (epsilon_after(2, Z, 1e-5) + epsilon_after(3, Z, 1e-5)) / 2
    job = write_job(
        "standard",
        tmp / "jobs",
        model_id=model_id,
        num_rounds=4,
        dp_noise_multiplier=Z,
        dp_max_epsilon=budget,
        dp_clip_norm=1.0,
        uncertainty="ensemble",
    )
    run = simulate(tmp, job, weed, SITES, threads=2)
    final = run.statuses(model_id)[-1]
    manifest, objects = run_objects(weed, run_prefix(model_id, final["run_id"]))
    return budget, run, final, manifest, objects


def test_training_stops_cleanly_before_the_budget_is_exceeded(budget_run):
    budget, run, final, manifest, objects = budget_run
    assert final["status"] == "RESULTS_UPLOADED"  # a clean end: the model so far is validated and uploaded
    metrics = json.loads(objects[RunFile.METRICS])
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert "after round 2: privacy budget: site-" in metrics["stopped_early"]
    assert f"max_epsilon {budget:g}" in metrics["stopped_early"]
    assert manifest["stopped_early"] == metrics["stopped_early"]
    assert "Training stopped early" in objects["report/index.html"].decode()
    assert RunFile.CROSS_VAL_RESULTS in objects


def test_the_round_training_stopped_after_is_the_last_for_the_ensemble_too(budget_run):
    *_, objects = budget_run
    members = torch.load(io.BytesIO(objects[RunFile.ENSEMBLE]), weights_only=True)
    final = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    samples = {s: m["num_samples"] for s, m in json.loads(objects[RunFile.METRICS])["rounds"][-1]["sites"].items()}
    assert sorted(members) == sorted(samples) == SITES
    for name, value in final.items():  # the global model is the sample-weighted mean of the last local models
        mean = sum(members[s][name].double() * samples[s] for s in SITES) / sum(samples.values())
        assert torch.allclose(mean, value.double(), atol=1e-5), name


def test_epsilon_is_accounted_every_round_and_sent_with_the_metrics(budget_run):
    _, run, _, _, objects = budget_run
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    for k, entry in enumerate(rounds, start=1):
        for site in SITES:
            expected = epsilon_after(k, Z, 1e-5)
            assert entry["sites"][site]["dp_epsilon/client-level/delta-1e-05/rdp"] == pytest.approx(expected, rel=1e-5)
            dp = [a for a in entry["privacy"][site] if a["filter"] == "GaussianPrivacy"]
            assert dp and dp[0]["released"] == k and dp[0]["noise_multiplier"] == Z
            assert [a["filter"] for a in entry["privacy"][site]] == ["PercentilePrivacy", "GaussianPrivacy"]
    for site in SITES:
        log = run.log_text(site)
        assert len(re.findall(r"update \d: norm \S+ clipped to 1 .*noise σ=2", log)) == 2
        assert "privacy budget exhausted" not in log  # the server stopped first: no site had to refuse


def test_the_model_is_still_a_model(budget_run):
    *_, objects = budget_run
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
