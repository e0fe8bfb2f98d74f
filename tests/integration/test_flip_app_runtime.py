"""A FLIP app (flip-fl-base's Executor contract, a BatchNorm model, DICOM images per site) in the simulator: the
wiring of issue 16's runtime, end to end. Two runs: one that uploads, one whose app is wrong at one site.

The job is the standard job (flip.jobs.write_job) with the app in custom/ and FLIP's project id and query given to
the sites' executors, as FLIP's configs give them; each site has its own CSV and DICOM folder (FLIP_SITE_DATA,
flip simulate's --site-data).
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import torch

from flip.jobs import write_job
from flip.platform.site import SiteData
from flip.simulate import run_simulator
from tests import flip_runtime_apps as apps
from tests.conftest import environ
from tests.hostile.test_server import objects_of_model, strict_json
from tests.integration.conftest import SimRun, run_objects

pytestmark = [pytest.mark.simulator, pytest.mark.s3]

SITES = {"site-1": 3, "site-2": 2}  # accessions per site (two DICOM images each: 3 and 2 batches of two)


def flip_app_run(tmp: Path, weed, num_rounds: int, break_site: str | None = None) -> tuple[str, SimRun]:
    """Write the app and the sites' data, build the job, run it; ``break_site``'s CSV lacks ``accession_id``."""
    app = apps.write_app(tmp / "app", trainer=apps.EXECUTOR_TRAINER, validator=apps.EXECUTOR_VALIDATOR)
    data, offset = {}, 0
    for site, accessions in SITES.items():
        csv, images = apps.write_cohort(
            tmp / "data" / site,
            accessions,
            offset,
            accession_column="patient_id" if site == break_site else "accession_id",
        )
        data[site] = SiteData(dataframe=csv, images=images)
        offset += accessions
    model_id = str(uuid.uuid4())
    job = write_job("standard", tmp / "jobs", model_id=model_id, num_rounds=num_rounds, app_dir=app)
    client_config = next(job.rglob("config_fed_client.json"))
    config = json.loads(client_config.read_text())
    for executor in config["executors"]:
        if executor["executor"]["path"].endswith(("RUN_TRAINER", "RUN_VALIDATOR")):
            executor["executor"]["args"].update({"project_id": "project-7", "query": "SELECT * FROM cohort"})
    client_config.write_text(json.dumps(config, indent=2))
    local_dir = tmp / "flip"
    env = {
        **weed.env,
        "FLIP_LOCAL_DIR": str(local_dir),
        "FLIP_ENV": "dev",
        "FLIP_SITE_DATA": None,
        "LOCAL_DEV": None,
        "DEV_DATAFRAME": None,
        "DEV_IMAGES_DIR": None,
    }
    with environ(**env):
        rc = run_simulator(job, tmp / "workspace", sites=list(SITES), threads=2, site_data=data)
    return model_id, SimRun(rc, list(SITES), local_dir, tmp / "workspace", env)


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, weed):
    return flip_app_run(tmp_path_factory.mktemp("flip_app"), weed, num_rounds=2)


def test_flip_app_run_uploads_with_its_metrics_and_a_strictly_loadable_model(good_run, weed):
    """RESULTS_UPLOADED; every site's send_metrics_value labels in metrics.json (NaN dropped, repeated labels kept,
    the validator's metric too); the nested validation metrics in the results JSON; the global model holds every
    state_dict entry, the BatchNorm counter averaged over the sites, and loads strictly."""
    model_id, run = good_run
    statuses = [s["status"] for s in run.statuses(model_id)]
    assert statuses == ["INITIATED", "PREPARED", "TRAINING_STARTED", "RESULTS_UPLOADED"], run.statuses(model_id)
    [prefix] = {
        key.rsplit("/", 1)[0] + "/" for key in objects_of_model(weed, model_id) if key.endswith("manifest.json")
    }
    _, objects = run_objects(weed, prefix)
    metrics = strict_json(objects["metrics.json"])
    flip_metrics = {entry["round"]: entry["sites"] for entry in metrics["flip_metrics"]}
    for site in SITES:
        assert [len(flip_metrics[r][site]["TRAIN_LOSS"]) for r in (1, 2)] == [1, 1]  # the app's rounds 1 and 2
        train_f1 = [v for r in flip_metrics for v in flip_metrics[r].get(site, {}).get("TRAIN-F1-SCORE", [])]
        assert train_f1 == [0.5, 0.75, 0.5, 0.75]  # per round: 0.5, NaN (dropped), 0.75
        assert any("TEST_LOSS" in flip_metrics[r].get(site, {}) for r in flip_metrics)  # sent while validating
    results = strict_json(objects["results/cross_val_results.json"])
    for site, accessions in SITES.items():
        validation = results[site]["SRV_FL_global_model.pt"]
        assert validation["f1-score"] == {"Effusion": [0.5], "Lungs in normal arrangement": [0.25]}
        assert len(validation["loss"]) == accessions and 0 <= validation["accuracy"] <= 1
    state = torch.load(io.BytesIO(objects["global_model.pt"]), weights_only=True)
    namespace: dict = {}
    exec(apps.MODELS, namespace)  # noqa: S102 - the test's own model source
    namespace["get_model"]().load_state_dict(state, strict=True)
    # two rounds, each the sites' batches (3 and 2) averaged by batches: (9 + 4) / 5 = 2.6 -> 3
    assert int(state["bn.num_batches_tracked"]) == 6 and state["bn.num_batches_tracked"].dtype == torch.int64
    reported = [r for r in run.platform.read_metrics(model_id) if "TRAIN_LOSS" in r["metrics"]]
    assert sorted({r["site"] for r in reported}) == sorted(SITES)


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory, weed):
    return flip_app_run(tmp_path_factory.mktemp("flip_app_broken"), weed, num_rounds=1, break_site="site-2")


def test_flip_app_wrong_at_one_site_ends_in_error_naming_it_and_uploads_nothing(broken_run, weed):
    """site-2's cohort has no accession_id column: its FLIP_TRAINER's constructor fails; the run ends in ERROR
    naming the site and the cause in one short line (no path, no traceback); nothing is uploaded."""
    model_id, run = broken_run
    statuses = run.statuses(model_id)
    assert [s["status"] for s in statuses][-1] == "ERROR"
    reason = statuses[-1]["reason"]
    assert (
        reason.startswith("site site-2: custom/trainer.py: FLIP_TRAINER(")
        and "raised ValueError: the dev dataframe <path> has no 'accession_id' column" in reason
    ), reason
    assert "Traceback" not in reason and str(run.workspace) not in reason
    assert objects_of_model(weed, model_id) == []
