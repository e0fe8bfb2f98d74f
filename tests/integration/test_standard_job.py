"""jobs/standard end to end: the real simulator (3 sites, 2 threads), a real S3 server, real files; then the
evaluation-only job on the model it trained (the one module using the session's standard run, so that
``--dist loadfile`` runs it once)."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
import torch

from flip.cli import main as flip_cli
from flip.constants import RunFile
from flip.demo.data import holdout_accuracy
from flip.jobs import DEFAULT_MODEL_ID, DEMO_APP_DIR, write_job
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from flip.storage.pending import is_log_file
from tests.conftest import environ
from tests.integration.conftest import direct_evaluation, load_app_module, run_objects, simulate

pytestmark = [pytest.mark.simulator, pytest.mark.s3]


@pytest.fixture(scope="module")
def uploaded(standard_run, weed):
    """The run's S3 prefix, manifest and every object's bytes."""
    statuses = standard_run.statuses(DEFAULT_MODEL_ID)
    run_id = statuses[-1]["run_id"]
    prefix = run_prefix(DEFAULT_MODEL_ID, run_id)
    client = weed._client()
    listing = client.list_objects_v2(Bucket=weed.bucket, Prefix=prefix).get("Contents", [])
    objects = {
        o["Key"][len(prefix) :]: client.get_object(Bucket=weed.bucket, Key=o["Key"])["Body"].read() for o in listing
    }
    return prefix, json.loads(objects[RunFile.MANIFEST]), objects


def test_simulator_ends_cleanly(standard_run):
    assert standard_run.rc == 0


def test_status_lifecycle_in_order_once_each(standard_run):
    statuses = [s["status"] for s in standard_run.statuses(DEFAULT_MODEL_ID)]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"]


def test_every_manifest_sha256_matches_the_stored_bytes(uploaded, weed):
    prefix, manifest, objects = uploaded
    listed = {e["key"] for e in manifest["objects"]}
    assert listed == set(objects) - {RunFile.MANIFEST}
    assert {RunFile.GLOBAL_MODEL, RunFile.METRICS, RunFile.CROSS_VAL_RESULTS} <= listed
    for entry in manifest["objects"]:
        body = objects[entry["key"]]
        assert len(body) == entry["size"]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]
    assert verify_run(weed._client(), weed.bucket, prefix)["run_id"] == manifest["run_id"]
    assert manifest["model_id"] == DEFAULT_MODEL_ID
    assert manifest["sites"] == ["site-1", "site-2", "site-3"]
    assert manifest["rounds"] == 3
    assert set(manifest["versions"]) == {"flip", "nvflare", "torch"}


def test_global_model_loads_safely_and_beats_chance(uploaded):
    _, _, objects = uploaded
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    accuracy = holdout_accuracy(state)
    assert accuracy >= 0.8, f"held-out accuracy {accuracy:.3f} (chance is 0.1)"


def test_no_best_model_is_fabricated(uploaded):
    _, _, objects = uploaded
    assert RunFile.BEST_MODEL not in objects  # no model selector in this job, so there is no "best" model


def test_metrics_json_has_every_round_and_site(uploaded):
    _, _, objects = uploaded
    metrics = json.loads(objects[RunFile.METRICS])
    assert [r["round"] for r in metrics["rounds"]] == [1, 2, 3]
    for entry in metrics["rounds"]:
        assert set(entry["sites"]) == {"site-1", "site-2", "site-3"}
        for site_metrics in entry["sites"].values():
            assert site_metrics["num_samples"] > 0
            assert 0.2 < site_metrics["accuracy"] <= 1.0  # a locally trained model beats chance (0.1)
        assert entry["global"]["num_samples"] == sum(m["num_samples"] for m in entry["sites"].values())
    assert metrics["rounds"][-1]["global"]["accuracy"] > metrics["rounds"][0]["global"]["accuracy"]


def test_cross_site_validation_covers_every_site(uploaded):
    _, _, objects = uploaded
    results = json.loads(objects[RunFile.CROSS_VAL_RESULTS])
    assert set(results) == {"site-1", "site-2", "site-3"}
    for site, models in results.items():
        assert set(models) == {RunFile.SERVER_MODEL}
        assert models[RunFile.SERVER_MODEL]["accuracy"] > 0.5, site


def test_cross_site_validation_values_equal_a_direct_validation(uploaded, standard_run):
    """Layout: {site: {"SRV_FL_global_model.pt": {"accuracy", "loss", "num_samples"}}}; values as the validator."""
    _, _, objects = uploaded
    results = json.loads(objects[RunFile.CROSS_VAL_RESULTS])
    state = torch.load(io.BytesIO(objects[RunFile.GLOBAL_MODEL]), map_location="cpu", weights_only=True)
    for site in standard_run.sites:
        expected = direct_evaluation(state, standard_run.local_dir / "cohorts" / site, val_only=True)
        got = results[site][RunFile.SERVER_MODEL]
        assert set(got) == {"accuracy", "loss", "num_samples"}
        assert got["num_samples"] == expected["num_samples"]
        assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_server_run_folder_is_cleaned_but_logs_kept(standard_run):
    run_folder = standard_run.workspace / "server" / "simulate_job"
    left = [p.name for p in run_folder.iterdir()] if run_folder.exists() else []
    assert all(is_log_file(name) for name in left), left
    assert not list(standard_run.workspace.glob("server/**/FL_global_model.pt"))
    assert not list(standard_run.workspace.glob(f"server/**/{RunFile.UPLOAD_PENDING}"))


def test_images_are_gone_at_every_site_even_with_more_sites_than_threads(standard_run):
    images = standard_run.local_dir / "images"
    for site in standard_run.sites:
        assert not (images / site / "simulate_job").exists(), site
        assert "run end: removed" in standard_run.log_text(site), site
        # the hospitals' own image stores are untouched
        assert any((standard_run.local_dir / "cohorts" / site).rglob("*.png")), site


def test_every_site_filtered_every_update(standard_run):
    for site in standard_run.sites:
        lines = re.findall(
            r"update: percentile 10 threshold \S+, shared ([\d.]+)% of (\d+) values", standard_run.log_text(site)
        )
        assert len(lines) == 3, site  # one filtered update per round
        for shared, total in lines:
            assert 0 < float(shared) <= 90.0 and int(total) > 0


def test_flip_status_reads_the_dev_platform(standard_run, capsys):
    with environ(FLIP_LOCAL_DIR=str(standard_run.local_dir)):
        assert flip_cli(["status", DEFAULT_MODEL_ID]) == 0
    out = capsys.readouterr().out
    assert "RESULTS_UPLOADED" in out and "metrics of round 3:" in out
    for site in standard_run.sites + ["global"]:
        assert re.search(rf"{site}: .*accuracy=.*num_samples=\d+", out), site


# -- the evaluation-only job on this run's model -----------------------------------------------------------------------

EVALUATION_SITES = ["site-1", "site-2"]


SAFEHOUSE_ONLY = "7c9d1e2f-3a4b-4c5d-8e6f-0a1b2c3d4e5f"


@pytest.fixture(scope="module")
def evaluation_run(tmp_path_factory, weed, standard_run):
    """Evaluate the standard job's model (from the registry) and a model that only has a safehouse copy."""
    tmp = tmp_path_factory.mktemp("evaluation")
    safehouse = tmp / "flip" / "safehouse" / SAFEHOUSE_ONLY
    safehouse.mkdir(parents=True)
    untrained = load_app_module(DEMO_APP_DIR, "models").DigitsNet()
    torch.save(untrained.state_dict(), safehouse / "initial_model.pt")
    job = write_job("evaluation", tmp / "jobs", model_id=DEFAULT_MODEL_ID, model_ids=[DEFAULT_MODEL_ID, SAFEHOUSE_ONLY])
    return simulate(tmp, job, weed, EVALUATION_SITES, threads=2)


@pytest.fixture(scope="module")
def evaluation_uploaded(evaluation_run, weed):
    """The evaluation run's manifest and objects, verified and fetched once."""
    return run_objects(weed, run_prefix(DEFAULT_MODEL_ID, evaluation_run.statuses(DEFAULT_MODEL_ID)[-1]["run_id"]))


def test_evaluation_job_lifecycle_and_upload(evaluation_run, evaluation_uploaded):
    assert evaluation_run.rc == 0
    assert [s["status"] for s in evaluation_run.statuses(DEFAULT_MODEL_ID)] == [
        "INITIATED",
        "PREPARED",
        "TRAINING_STARTED",
        "RESULTS_UPLOADED",
    ]
    manifest, objects = evaluation_uploaded
    assert RunFile.EVALUATION_RESULTS in objects
    assert RunFile.GLOBAL_MODEL not in objects  # nothing was trained: no model is uploaded
    assert not list((evaluation_run.workspace / "server" / "simulate_job").glob(RunFile.EVALUATION_DIR))


def test_evaluation_results_match_a_direct_evaluation_at_every_site(
    evaluation_run, evaluation_uploaded, weed, standard_run
):
    _, objects = evaluation_uploaded
    results = json.loads(objects[RunFile.EVALUATION_RESULTS])
    assert set(results) == set(EVALUATION_SITES)
    trained_run = standard_run.statuses(DEFAULT_MODEL_ID)[-1]["run_id"]
    trained = torch.load(
        io.BytesIO(
            weed._client()
            .get_object(Bucket=weed.bucket, Key=f"{DEFAULT_MODEL_ID}/{trained_run}/{RunFile.GLOBAL_MODEL}")["Body"]
            .read()
        ),
        weights_only=True,
    )
    untrained = torch.load(
        evaluation_run.local_dir / "safehouse" / SAFEHOUSE_ONLY / "initial_model.pt", weights_only=True
    )
    for site in EVALUATION_SITES:
        assert set(results[site]) == {DEFAULT_MODEL_ID, SAFEHOUSE_ONLY}
        cohort = evaluation_run.local_dir / "cohorts" / site
        for model_id, state in ((DEFAULT_MODEL_ID, trained), (SAFEHOUSE_ONLY, untrained)):
            expected = direct_evaluation(state, cohort)
            got = results[site][model_id]
            assert got["num_samples"] == expected["num_samples"]
            assert got["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5)
        assert results[site][DEFAULT_MODEL_ID]["accuracy"] > results[site][SAFEHOUSE_ONLY]["accuracy"] + 0.3
