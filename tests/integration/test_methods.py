"""Aggregation methods, uncertainty methods and trainer options in real simulator runs.

Each run's upload is sent to a missing bucket first, so the server's workspace stays on disk to be inspected
(local model files kept or deleted), then ``flip upload --resume`` finishes it and the artifacts are checked in S3.
That is also the upload-fault path in a real system: the run ends in ERROR naming the missing bucket, keeps its
workspace and pending upload, and the operator's resume (allowed to create the bucket) completes it; the faults
themselves (S3 down, killed mid-upload, network cut, wrong secret, read-only workspace) are in test_upload_faults.py.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import uuid
from pathlib import Path

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import RunFile
from flip.jobs import DEMO_APP_DIR, write_job
from flip.methods.feddc import daisy_chain, is_aggregation_round
from flip.storage.layout import run_prefix
from flip.storage.pending import is_log_file
from flip.uncertainty import ensemble_predict, swag_predict
from tests.conftest import environ
from tests.integration.conftest import direct_evaluation, load_app_module, run_objects, simulate
from tests.integration.late_site import LATE_ROUND, WAIT_AFTER_MIN_CLIENTS

pytestmark = [pytest.mark.simulator, pytest.mark.s3]


def _run_then_resume(tmp, weed, job, model_id, sites, threads):
    """Run with the bucket missing (the run fails, its workspace kept), snapshot the workspace, resume as an operator
    does (same bucket, now allowed to create it); check the failure and the resume; return what was uploaded."""
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    run = simulate(tmp, job, weed, sites, threads=threads, extra_env={"FLIP_MODELS_BUCKET": bucket})
    failed = run.statuses(model_id)[-1]
    assert failed["status"] == "ERROR" and f"bucket '{bucket}' does not exist" in failed["reason"], failed
    server = run.workspace / "server" / "simulate_job"
    assert (server / RunFile.UPLOAD_PENDING).is_file()
    kept = sorted(p.relative_to(server).as_posix() for p in server.rglob("*.pt"))
    with environ(**{**run.env, **weed.env, "FLIP_MODELS_BUCKET": bucket, "FLIP_S3_CREATE_BUCKET": "true"}):
        resumed = flip_cli(["upload", "--resume", str(run.workspace)])
    final = run.statuses(model_id)[-1]
    assert final["status"] == "RESULTS_UPLOADED" and final["run_id"] == failed["run_id"], final
    assert all(is_log_file(p.name) for p in server.iterdir())  # cleaned once the resumed upload verified
    _, objects = run_objects(weed, run_prefix(model_id, final["run_id"]), bucket=bucket)
    return run, kept, resumed, objects


# -- FedDC + ensemble + a test of each new global model + local models kept ----------------------------------------

FEDDC_SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="module")
def feddc_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("feddc")
    model_id = str(uuid.uuid4())
    # DLR's count: 2 aggregations, one every 2 rounds: 4 training rounds; local models kept (not DLR's default)
    job = write_job(
        "standard",
        tmp / "jobs",
        model_id=model_id,
        num_rounds=2,
        min_clients=3,
        aggregation="feddc",
        daisy_chain_period=2,
        seed=5,
        uncertainty="ensemble",
        model_test_after_each_round=True,
        delete_local_models_after_aggregation=False,
    )
    return (model_id, *_run_then_resume(tmp, weed, job, model_id, FEDDC_SITES, threads=3))


def test_feddc_aggregates_exactly_every_period_and_at_the_end(feddc_run):
    """num_rounds=2 with daisy_chain_period=2 trains 4 rounds and aggregates twice, as DLR counts (target number
    of updates × period); before, num_rounds counted training rounds (2 rounds, 1 aggregation)."""
    _, run, _, resumed, objects = feddc_run
    assert resumed == 0
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    assert len(rounds) == 4
    assert [r["feddc"]["aggregated"] for r in rounds] == [is_aggregation_round(i, 2, 4) for i in range(4)]
    assert [r["feddc"]["aggregated"] for r in rounds] == [False, True, False, True]


def test_feddc_routes_local_models_between_sites_as_seeded(feddc_run):
    """Which site trained which model in which round: the fingerprint each site reports of the model it received
    is the fingerprint of the local model the route says it gets."""
    _, _, _, _, objects = feddc_run
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    for i, entry in enumerate(rounds[:-1]):
        following = rounds[i + 1]
        received = {site: m["received_checksum"] for site, m in following["sites"].items()}
        if entry["feddc"]["aggregated"]:
            assert "routing" not in entry["feddc"]
            assert all(v == pytest.approx(entry["feddc"]["global_checksum"], rel=1e-12) for v in received.values())
        else:
            routing = entry["feddc"]["routing"]
            assert routing == daisy_chain(FEDDC_SITES, 5, i)
            for receiver, sender in routing.items():
                assert receiver != sender
                assert received[receiver] == pytest.approx(entry["feddc"]["local_checksums"][sender], rel=1e-12)
                assert received[receiver] != pytest.approx(entry["feddc"]["local_checksums"][receiver], rel=1e-9)


def test_each_new_global_model_is_tested_at_every_site(feddc_run):
    _, run, _, _, objects = feddc_run
    rounds = json.loads(objects[RunFile.METRICS])["rounds"]
    for entry in rounds:
        if entry["feddc"]["aggregated"]:
            assert set(entry["validation"]) == set(FEDDC_SITES)
            assert all(m["accuracy"] > 0.2 for m in entry["validation"].values())  # better than chance (0.1)
        else:
            assert "validation" not in entry  # no new global model in a daisy-chain round
    # the last round's new global model is the final one: its tests are a validation of the uploaded model
    final = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    for site, got in rounds[-1]["validation"].items():
        expected = direct_evaluation(final, run.local_dir / "cohorts" / site, val_only=True)
        assert got["num_samples"] == expected["num_samples"]
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)


def test_local_models_stay_on_disk_without_the_delete_option(feddc_run):
    _, _, kept, _, _ = feddc_run
    for round_num in range(1, 4):
        for site in FEDDC_SITES:
            assert f"{RunFile.LOCAL_MODELS_DIR}/round_{round_num}/{site}.pt" in kept


def test_ensemble_holds_every_sites_last_local_model(feddc_run):
    _, _, _, _, objects = feddc_run
    members = torch.load(io.BytesIO(objects[RunFile.ENSEMBLE]), weights_only=True)
    final = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    assert set(members) == set(FEDDC_SITES)
    for state in members.values():
        assert set(state) == set(final) and not all(torch.equal(state[k], final[k]) for k in final)
    mean, std = ensemble_predict(load_app_module(DEMO_APP_DIR, "models").get_model, members, torch.rand(8, 8, 8))
    assert torch.allclose(mean.sum(1), torch.ones(8)) and std.max() > 0
    assert json.loads(objects[RunFile.UNCERTAINTY])["method"] == "ENSEMBLE"


# -- FedProx + SWAG + no model tests + local models deleted ---------------------------------------------------------

PROX_SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def prox_swag_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("prox_swag")
    model_id = str(uuid.uuid4())
    job = write_job(
        "standard",
        tmp / "jobs",
        model_id=model_id,
        num_rounds=2,
        aggregation="fedprox",
        fedprox_mu=0.1,
        uncertainty="swag",
        swag_epochs=3,
        skip_model_tests=True,
        delete_local_models_after_aggregation=True,
    )
    return (model_id, *_run_then_resume(tmp, weed, job, model_id, PROX_SITES, threads=2))


def test_fedprox_reaches_every_sites_training(prox_swag_run):
    _, run, _, _, _ = prox_swag_run
    for site in PROX_SITES:
        assert len(re.findall(r"round \d/2: trained on .*FedProx mu=0.1;", run.log_text(site))) == 2


def test_no_local_model_file_remains_after_aggregation(prox_swag_run):
    _, _, kept, _, _ = prox_swag_run
    assert not [p for p in kept if p.startswith(RunFile.LOCAL_MODELS_DIR)], kept
    assert "app_server/FL_global_model.pt" in kept  # the global model itself is kept until uploaded


def test_swag_round_stores_mean_and_clamped_variance(prox_swag_run):
    _, run, _, resumed, objects = prox_swag_run
    assert resumed == 0
    posterior = torch.load(io.BytesIO(objects[RunFile.SWAG]), weights_only=True)
    final = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), weights_only=True)
    assert (
        set(posterior["mean"]) == set(posterior["variance"]) == {k for k, v in final.items() if v.is_floating_point()}
    )
    assert posterior["sites"] == PROX_SITES and posterior["swag_epochs"] == 3 and posterior["num_samples"] > 0
    assert all((v >= 0).all() for v in posterior["variance"].values())
    assert any((v > 0).any() for v in posterior["variance"].values())
    assert any(not torch.equal(posterior["mean"][k], final[k]) for k in posterior["mean"])
    for site in PROX_SITES:
        assert "SWAG: 3 snapshots" in run.log_text(site)
    get_model = load_app_module(DEMO_APP_DIR, "models").get_model
    mean, std = swag_predict(get_model, posterior, torch.rand(4, 8, 8), samples=5)
    assert std.max() > 0
    assert json.loads(objects[RunFile.UNCERTAINTY])["method"] == "SWAG"


def test_skip_model_tests_runs_no_validation(prox_swag_run):
    _, run, _, _, objects = prox_swag_run
    assert not [k for k in objects if k.startswith("results/")]
    for site in PROX_SITES:
        assert "RUN_VALIDATOR" not in run.log_text(site) and "validate SRV" not in run.log_text(site)


# -- a late site --------------------------------------------------------------------------------------------------

LATE = Path(__file__).with_name("late_site.py")


def _with_late_site(job: Path, site: str) -> None:
    """Give ``site`` its own app: the job's, but training with LateTrainer and no privacy filter."""
    late = job / "app_late"
    shutil.copytree(job / "app", late)
    shutil.copy(LATE, late / "custom" / "late_site.py")
    config_path = late / "config" / "config_fed_client.json"
    config = json.loads(config_path.read_text())
    for entry in config["executors"]:
        if "train" in entry["tasks"]:
            entry["executor"] = {"path": "late_site.LateTrainer", "args": {}}
    config["task_result_filters"] = []
    config_path.write_text(json.dumps(config, indent=2))
    meta_path = job / "meta.json"
    meta = json.loads(meta_path.read_text())
    others = [s for s in ("server", "site-1", "site-2", "site-3") if s != site]
    meta["deploy_map"] = {"app": others, "app_late": [site]}
    meta_path.write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="module")
def late_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("late")
    model_id = str(uuid.uuid4())
    job = write_job(
        "standard",
        tmp / "jobs",
        model_id=model_id,
        num_rounds=LATE_ROUND + 2,
        min_clients=2,
        wait_after_min_clients=WAIT_AFTER_MIN_CLIENTS,
        skip_model_tests=True,
    )
    _with_late_site(job, "site-3")
    return model_id, simulate(tmp, job, weed, ["site-1", "site-2", "site-3"], threads=3)


def test_a_late_update_is_dropped_and_the_site_takes_part_again(late_run, weed):
    """NVFlare itself drops the late result (the site asks whether its task still stands); a stale update that
    reaches the aggregator anyway is excluded by round (tests/unit/test_methods.py). Updates that are wrong in
    themselves are excluded with their reasons by the aggregator: tests/unit/test_server_run.py."""
    model_id, run = late_run
    final = run.statuses(model_id)[-1]
    assert final["status"] == "RESULTS_UPLOADED", final
    prefix = run_prefix(model_id, final["run_id"])
    rounds = json.loads(weed._client().get_object(Bucket=weed.bucket, Key=prefix + RunFile.METRICS)["Body"].read())[
        "rounds"
    ]
    accepted = [sorted(r["accepted"]) for r in rounds]
    assert accepted[LATE_ROUND] == ["site-1", "site-2"]  # its update came after the round had closed
    for i in (LATE_ROUND - 1, LATE_ROUND + 1):
        assert accepted[i] == ["site-1", "site-2", "site-3"]  # before, and taken again after
    server_log = (run.workspace / "server" / "log.txt").read_text()
    assert re.search(r"peer=site-3.*task \S+ is not found", server_log)
