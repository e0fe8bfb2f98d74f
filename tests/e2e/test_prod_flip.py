"""One prod run end to end against FLIP's services: the standard job in the simulator, two sites, the hub replica and
two trust replicas (each site its own trust and data), real S3 (issue 17, item 5).

The server gets the hub's key from a file (INTERNAL_SERVICE_KEY_FILE), so the key is in no process's environment:
the simulator's sites inherit the parent's. Each site's trust variables come from FLIP_SITE_ENV. The app
(tests/replicas/app) is written against FLIP's API: its cohort comes from the data-access replica (SQL over an
OMOP-shaped SQLite database), each image from the imaging replica (DICOM copied into the site's images folder).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from flip.cli import main as flip_cli
from flip.jobs import write_job
from flip.storage.layout import run_prefix
from tests.conftest import environ
from tests.integration.conftest import run_objects, simulate
from tests.replicas.crypto import encrypt_project_id, new_key
from tests.replicas.fixtures import COHORT_QUERY, HUB_KEY, SITES, USER_TOKEN, running_hub, running_trust

pytestmark = [pytest.mark.e2e, pytest.mark.simulator, pytest.mark.s3, pytest.mark.http]

APP = Path(__file__).resolve().parent.parent / "replicas" / "app"
LABELS = ("num_samples", "loss", "accuracy")


@pytest.fixture(scope="module")
def prod_run(tmp_path_factory, weed):
    tmp = tmp_path_factory.mktemp("prod_flip")
    model_id, project_id, aes_key = str(uuid.uuid4()), str(uuid.uuid4()), new_key()
    s3 = {
        "bucket_url": f"s3://{weed.bucket}",
        "endpoint": weed.env["AWS_ENDPOINT_URL_S3"],
        "key": weed.env["AWS_ACCESS_KEY_ID"],
        "secret": weed.env["AWS_SECRET_ACCESS_KEY"],
    }
    with (
        running_hub(tmp / "hub", model_id=model_id, s3=s3) as hub,
        running_trust(tmp / "trust-a", "A", count=60, aes_key=aes_key, project_id=project_id) as a,
        running_trust(tmp / "trust-b", "B", start=600, count=60, aes_key=aes_key, project_id=project_id) as b,
    ):
        app = tmp / "app"
        shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__"))
        (app / "config.json").write_text(
            json.dumps(
                {
                    "LOCAL_ROUNDS": 5,
                    "LEARNING_RATE": 0.1,
                    "PROJECT_ID": encrypt_project_id(project_id, aes_key),
                    "QUERY": COHORT_QUERY,
                    "FAIL_VALIDATION_AT": "site-2",
                }
            )
        )
        job = write_job("standard", tmp / "jobs", model_id=model_id, num_rounds=2, app_dir=app)
        key_file = tmp / "server-secrets" / "hub.key"
        key_file.parent.mkdir(mode=0o700)
        key_file.write_text(HUB_KEY + "\n")
        env = {
            "FLIP_ENV": "prod",
            "FLIP_API_INTERNAL_URL": hub.url,
            "INTERNAL_SERVICE_KEY_FILE": str(key_file),
            "FLIP_MODELS_BUCKET": None,
            "UPLOADED_FEDERATED_DATA_BUCKET": f"s3://{weed.bucket}",
            "FLIP_SITE_ENV": json.dumps({"site-1": a.site_env(), "site-2": b.site_env()}),
            "E2E_ENV_DUMP": str(tmp / "site-env"),
            "FLIP_HUB_RETRIES": "2",
        }
        started = time.monotonic()
        run = simulate(tmp, job, weed, list(SITES), threads=2, extra_env=env, cohorts_ready=True)
        print(f"prod run in the simulator: {time.monotonic() - started:.1f} s")
        yield model_id, hub, {"site-1": a, "site-2": b}, run, tmp


def test_the_run_ends_with_every_status_at_the_hub_in_order(prod_run):
    model_id, hub, _, run, _ = prod_run
    assert run.rc == 0
    assert hub.replica.statuses(model_id) == ["INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    assert hub.replica.query("SELECT status FROM model WHERE id = ?", model_id) == [{"status": "RESULTS_UPLOADED"}]


def _uploaded(weed, model_id: str) -> tuple[str, dict, dict[str, bytes]]:
    listed = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=f"{model_id}/")
    (run_id,) = {o["Key"].split("/")[1] for o in listed["Contents"]}
    return (run_id, *run_objects(weed, run_prefix(model_id, run_id)))  # our verification: every object matches


def test_every_metric_reaches_the_hub_in_order(prod_run, weed):
    model_id, hub, _, _, _ = prod_run
    rows = hub.replica.metrics(model_id)
    _, _, objects = _uploaded(weed, model_id)
    recorded = {
        (site, entry["round"], label, value)
        for entry in json.loads(objects["metrics.json"])["rounds"]
        for site, values in entry["sites"].items()
        for label, value in values.items()
        if isinstance(value, (int, float))
    }
    assert {(r["fl_client_name"], r["global_round"], r["label"], r["result"]) for r in rows} == recorded
    assert {label for *_, label, _ in recorded} >= set(LABELS) and len(rows) == len(recorded)
    assert [r["global_round"] for r in rows] == sorted(r["global_round"] for r in rows)
    assert all(r["trust"] == hub.trusts[r["fl_client_name"]] for r in rows)


def test_round_events_and_the_site_failure_reach_the_hub_in_order(prod_run):
    model_id, hub, _, _, _ = prod_run
    ours = [r for r in hub.replica.logs(model_id) if r["event_type"] or r["fl_client_name"] or not r["success"]]
    events = [(r["event_type"], r["global_round"], r["fl_client_name"]) for r in ours if r["event_type"]]
    for round_num in (1, 2):
        mine = [e for e in events if e[1] == round_num]
        assert mine[0] == ("ROUND_STARTED", round_num, None) and mine[-1] == ("ROUND_AGGREGATED", round_num, None)
        assert sorted(e[2] for e in mine[1:-1]) == list(SITES)
    assert events.index(("ROUND_AGGREGATED", 1, None)) < events.index(("ROUND_STARTED", 2, None))
    (failure,) = [r for r in ours if r["log"] and r["fl_client_name"]]
    assert failure["fl_client_name"] == "site-2" and failure["success"] == 0
    assert failure["log"] == "custom/validator.py: FLIP_VALIDATOR.validate raised RuntimeError"
    aggregated = [r["details"] for r in ours if r["event_type"] == "ROUND_AGGREGATED"]
    assert aggregated == [{"returned": 2, "expected": 2}] * 2


def test_images_come_only_through_each_sites_imaging_service(prod_run):
    _, _, trusts, run, _ = prod_run
    assert not (run.local_dir / "cohorts").exists()  # no local copy anywhere
    for site, trust in trusts.items():
        fetched = {(net, accession) for net, accession, resource in trust.imaging.downloads}
        assert fetched == {("net-1", accession) for accession, _ in trust.cohort}, site
        assert {r for *_, r in trust.imaging.downloads} == {"DICOM"}
        assert len(trust.data.received) >= 1
        assert not (trust.images / "net-1").exists()  # CleanupImages emptied <IMAGES_DIR>/<NET_ID> at the end
    assert not {a for a, _ in trusts["site-1"].cohort} & {a for a, _ in trusts["site-2"].cohort}


def test_the_model_lands_verified_where_the_hubs_listing_finds_it(prod_run, weed):
    model_id, hub, _, _, _ = prod_run
    run_id, manifest, objects = _uploaded(weed, model_id)
    request = urllib.request.Request(
        f"{hub.url}/files/model/{model_id}/fl/results", headers={"Authorization": f"Bearer {USER_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        urls = json.loads(reply.read())
    downloaded = {}
    for url in urls:
        with urllib.request.urlopen(url, timeout=10) as reply:  # the hub's presigned links, as a user gets them
            downloaded[url.split("?")[0].split(f"/{model_id}/{run_id}/", 1)[1]] = reply.read()
    assert set(downloaded) == {e["key"] for e in manifest["objects"]} | {"manifest.json"}
    for entry in manifest["objects"]:
        assert hashlib.sha256(downloaded[entry["key"]]).hexdigest() == entry["sha256"], entry["key"]
    assert json.loads(downloaded["manifest.json"]) == manifest
    assert "global_model.pt" in objects


def test_the_hub_key_is_in_no_sites_environment_log_or_message(prod_run):
    _, hub, trusts, run, tmp = prod_run
    dumps = list((tmp / "site-env").glob("*.json"))
    assert {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in dumps} == set(SITES)
    for dump in dumps:
        environment = json.loads(dump.read_text())
        assert HUB_KEY not in json.dumps(environment), dump.name
        assert "INTERNAL_SERVICE_KEY" not in environment and "FLIP_HUB_API_KEY" not in environment
    for site in SITES:
        files = [p for p in (run.workspace / site).rglob("*") if p.is_file()]
        assert any(p.name == "log.txt" for p in files)
        for path in files:
            assert HUB_KEY.encode() not in path.read_bytes(), path
    for trust in trusts.values():  # everything the sites sent out of their process besides NVFlare's messages
        for received in trust.data.received + trust.imaging.received:
            assert HUB_KEY not in json.dumps(received["headers"]) and HUB_KEY.encode() not in received["body"]
    # the server sent it to the internal routes, in the header the hub checks; the user routes (this test's reads)
    # carry a user's token, not the key; no body carries it
    for request in hub.replica.requests():
        headers = json.loads(request["headers"])
        internal = request["method"] in ("PUT", "POST") and request["path"].startswith("/api/model/")
        assert headers.get("x-internal-service-key") == (HUB_KEY if internal else None), request["path"]
        assert HUB_KEY.encode() not in request["body"]


def test_flip_status_reads_the_run_back_from_the_hub(prod_run, capsys):
    model_id, hub, _, run, _ = prod_run
    env = {
        "FLIP_ENV": "prod",
        "FLIP_API_INTERNAL_URL": hub.url,
        "FLIP_HUB_USER_TOKEN": USER_TOKEN,
        "FLIP_LOCAL_DIR": str(run.local_dir),
    }
    with environ(**env):
        assert flip_cli(["status", model_id]) == 0
    out = capsys.readouterr().out
    assert out.index("PREPARED") < out.index("RUNNING") < out.index("RESULTS_UPLOADED")
    assert "metrics of round 2:" in out and "T1: " in out and "T2: " in out and "accuracy=" in out
    assert "failure Trust 2: custom/validator.py: FLIP_VALIDATOR.validate raised RuntimeError" in out
    assert "not delivered" not in out
    assert HUB_KEY not in out and USER_TOKEN not in out
