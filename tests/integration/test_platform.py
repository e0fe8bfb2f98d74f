"""The prod platform in a real run: the hub gets the lifecycle and every site's metrics; nothing secret or
patient-identifying leaves in logs, hub requests or uploaded files. (An undeliverable final status ending the run in
ERROR: tests/unit/test_server_run.py.)"""

from __future__ import annotations

import io
import json
import re
import uuid

import pytest
from PIL import Image

from flip.constants import RunFile
from flip.jobs import write_job
from flip.storage.layout import run_prefix
from flip.cli import main as flip_cli
from tests.conftest import environ
from tests.hub_server import HubServer
from tests.integration.conftest import run_objects, simulate

pytestmark = [pytest.mark.simulator, pytest.mark.s3]

HUB_KEY = "FAKE-HUB-KEY-1f6c2b"
PATIENT_ID = "PATIENT-7733-ZX"
SITES = ["site-1", "site-2"]


def _tag_cohorts_with_a_patient_id(local_dir):
    """Image names and a sidecar file that carry a patient identifier, as real exports do."""
    for site in SITES:
        cohort = local_dir / "cohorts" / site
        for image in cohort.rglob("*.png"):
            image.rename(image.with_name(f"{PATIENT_ID}_{image.name}"))
        (cohort / "patients.csv").write_text(f"patient_id,label\n{PATIENT_ID},3\n")


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("hub_run")
    model_id = str(uuid.uuid4())
    job = write_job("standard", tmp / "jobs", model_id=model_id, num_rounds=2)
    from flip.demo.data import write_cohorts

    write_cohorts(tmp / "flip", SITES)
    _tag_cohorts_with_a_patient_id(tmp / "flip")
    with HubServer(api_key=HUB_KEY) as hub:
        env = {"FLIP_ENV": "prod", "FLIP_HUB_URL": hub.url, "FLIP_HUB_API_KEY": HUB_KEY}
        run = simulate(tmp, job, weed, SITES, threads=2, extra_env=env, cohorts_ready=True)
        yield model_id, hub, run


def test_hub_gets_the_lifecycle_in_order(hub_run):
    model_id, hub, run = hub_run
    assert run.rc == 0
    assert [s["status"] for s in hub.statuses(model_id)] == ["INITIATED", "PREPARED", "TRAINING_STARTED",
                                                            "RESULTS_UPLOADED"]
    assert len({s["run_id"] for s in hub.statuses(model_id)}) == 1


def test_hub_gets_every_sites_metrics_every_round(hub_run):
    model_id, hub, _ = hub_run
    metrics = hub.metrics(model_id)
    assert {(m["round"], m["site"]) for m in metrics} == {(r, s) for r in (1, 2) for s in SITES + ["global"]}
    for m in metrics:
        assert {"num_samples", "loss", "accuracy"} <= set(m["metrics"])
        assert all(isinstance(v, (int, float)) for v in m["metrics"].values())


@pytest.fixture(scope="module")
def uploaded(hub_run, weed):
    """The hub run's S3 prefix, manifest and objects, verified and fetched once for the tests that read them."""
    model_id, hub, _ = hub_run
    prefix = run_prefix(model_id, hub.statuses(model_id)[-1]["run_id"])
    return (prefix, *run_objects(weed, prefix))


def test_report_is_uploaded_and_opens(uploaded, weed):
    prefix, _, objects = uploaded
    image = Image.open(io.BytesIO(objects["report/curves.png"]))
    assert image.format == "PNG" and image.size[0] > 400
    page = objects["report/index.html"].decode()
    assert f"s3://{weed.bucket}/{prefix}" in page and "site-1" in page and "site-2" in page
    assert "PercentilePrivacy" in page and RunFile.SERVER_MODEL in page
    metrics = json.loads(objects[RunFile.METRICS])
    (applied,) = metrics["rounds"][-1]["privacy"]["site-1"]
    assert applied["filter"] == "PercentilePrivacy" and applied["gamma"] == 0.01


def test_flip_status_shows_the_lifecycle_and_latest_metrics_from_the_hub(hub_run, capsys):
    model_id, hub, run = hub_run
    with environ(**run.env):
        assert flip_cli(["status", model_id]) == 0
    out = capsys.readouterr().out
    assert out.index("INITIATED") < out.index("PREPARED") < out.index("TRAINING_STARTED") < out.index("RESULTS_UPLOADED")
    assert "metrics of round 2:" in out and re.search(r"site-1: .*num_samples=\d+", out) and "global:" in out
    assert HUB_KEY not in out


def test_nothing_secret_or_patient_identifying_leaves(hub_run, uploaded, weed):
    _, hub, run = hub_run
    forbidden = [HUB_KEY, weed.secret_key, PATIENT_ID]
    logs = [p for p in run.workspace.rglob("*") if p.is_file() and p.suffix in (".txt", ".json")]
    assert any(p.name == "log.txt" for p in logs)
    texts = {str(p): p.read_text(errors="replace") for p in logs}
    texts.update({f"hub request {i}": b.decode(errors="replace") for i, b in enumerate(hub.bodies)})
    texts.update({f"hub path {i}": p for i, p in enumerate(hub.paths)})
    _, _, objects = uploaded
    texts.update({f"s3 object {k}": v.decode(errors="replace") for k, v in objects.items()})
    for where, text in texts.items():
        for secret in forbidden:
            assert secret not in text, f"{secret!r} found in {where}"
    assert (run.local_dir / "cohorts" / "site-1" / "patients.csv").exists()  # the hospital's data is untouched
