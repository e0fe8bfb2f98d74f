"""Whole server runs without the simulator: the standard job's server app as flip.jobs writes it (its components
and workflows built from config_fed_server.json by NVFlare's component builder), run by NVFlare's own ServerRunner
loop on a ServerEngine, the sites answering in process (tests/fakes.py). What a run does at the server (its status
lifecycle, what a failure is named, what is uploaded) is checked here; the simulator runs in tests/integration
check that the parts are wired together in a real system.
"""

from __future__ import annotations

import json
import logging
import uuid

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import FLContextKey
from nvflare.app_common.app_event_type import AppEventType

from flip.constants import FlipMeta, FlipTask, RunFile, RunStatus
from flip.jobs import write_job
from flip.platform.dev import LocalPlatform
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from tests.fakes import Server, diff_of, good_update
from tests.replicas.fixtures import HUB_KEY, MODEL_ID, running_hub


@pytest.fixture
def dev(tmp_path, monkeypatch):
    """The dev platform in ``<tmp>/flip``, as the settings give it to a run."""
    monkeypatch.setenv("FLIP_ENV", "dev")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    return LocalPlatform(tmp_path / "flip")


def standard_server(tmp_path, sites=("site-1", "site-2"), platform=None, model_id=None, **options) -> Server:
    """The server of a standard job written with ``options`` and a model id of its own (or ``model_id``)."""
    job = write_job("standard", tmp_path / "jobs", model_id=model_id or str(uuid.uuid4()), **options)
    return Server.from_job(tmp_path, job, sites=sites, platform=platform)


def no_task_was_sent(server: Server) -> bool:
    return all(not flow.controller.communicator.sent for flow in server.runner.config.workflows)


def fatal(server: Server) -> bool:
    """Did the run end as NVFlare ends a failed run: aborted, with the sticky FATAL_SYSTEM_ERROR mark?"""
    return server.runner.abort_signal.triggered and bool(
        server.engine.new_context().get_prop(FLContextKey.FATAL_SYSTEM_ERROR, False)
    )


# -- failures at the start of a run (simulator runs they replace: too_few_sites_run, prod_run) ------------------


@pytest.mark.unit
def test_min_clients_above_the_number_of_sites_fails_at_start_naming_it(tmp_path, dev):
    server = standard_server(tmp_path, min_clients=3, num_rounds=1)
    server.run()
    assert fatal(server)
    statuses = server.statuses()
    assert [s["status"] for s in statuses] == ["INITIATED", "ERROR"]
    assert "InitTraining: min_clients is 3 but only 2 sites joined the run" in statuses[-1]["reason"]
    assert AppEventType.ROUND_STARTED not in server.engine.fired and no_task_was_sent(server)  # no training


@pytest.mark.unit
def test_prod_without_hub_settings_fails_at_job_start_naming_them(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("FLIP_ENV", "prod")
    server = standard_server(tmp_path, num_rounds=1, platform="settings")
    caplog.set_level(logging.INFO)
    server.run()
    assert fatal(server)
    named = (
        "FLIP_ENV=prod: the server needs FLIP_API_INTERNAL_URL (or FLIP_HUB_URL) and INTERNAL_SERVICE_KEY (or "
        "FLIP_HUB_API_KEY, or INTERNAL_SERVICE_KEY_FILE) to reach the hub"
    )
    assert any(named in r.getMessage() and "Aborting current RUN" in r.getMessage() for r in caplog.records)
    assert server.handler.final_status == RunStatus.ERROR and named in server.handler.error_reason
    assert AppEventType.ROUND_STARTED not in server.engine.fired and no_task_was_sent(server)  # no training


# -- the end of a run (simulator run it replaces: undeliverable_final_status) -----------------------------------


@pytest.mark.s3
def test_an_undeliverable_final_status_is_recorded_for_a_resend(tmp_path, s3_env, monkeypatch, caplog):
    """The whole server run against the hub replica refusing the final status: the model is uploaded and verified,
    the hub has the statuses up to RUNNING, and RESULTS_UPLOADED is recorded on the server for `flip status
    --resend` (issue 17: it stands, it does not turn into ERROR)."""
    caplog.set_level(logging.INFO)
    with running_hub(tmp_path / "hub") as hub:
        hub.replica.faults.reject_status = {"RESULTS_UPLOADED"}
        for key, value in {
            "FLIP_ENV": "prod",
            "FLIP_API_INTERNAL_URL": hub.url,
            "INTERNAL_SERVICE_KEY": HUB_KEY,
            "FLIP_HUB_RETRIES": "2",
            "FLIP_LOCAL_DIR": str(tmp_path / "server"),
        }.items():
            monkeypatch.setenv(key, value)
        server = standard_server(tmp_path, num_rounds=1, skip_model_tests=True, platform="settings", model_id=MODEL_ID)
        server.run(answers={FlipTask.TRAIN: good_update})
        on_the_hub = hub.replica.statuses(server.model_id)
    assert on_the_hub == ["INITIATED", "PREPARED", "RUNNING"]
    assert server.handler.final_status == RunStatus.RESULTS_UPLOADED
    undelivered = server.handler.platform.undelivered(server.model_id)
    assert [(r["status"], r["run_id"]) for r in undelivered] == [("RESULTS_UPLOADED", server.handler.run_id)]
    # the upload itself held: only the final status could not be delivered
    verify_run(s3_env._client(), s3_env.bucket, run_prefix(server.model_id, server.handler.run_id))


# -- updates the aggregator refuses (simulator runs they replace: too_few_run; misbehaving_run's rounds 1-3) -------


def misbehaving(bad_site: str, rounds: dict[int, str]):
    """Train answers: every site well-behaved, but ``bad_site`` in the given rounds (0-based): ``nan`` (an update
    holding NaN), ``shape`` (a parameter of the wrong shape) or ``zero`` (num_samples 0)."""

    def answer(site, data):
        result = good_update(site, data)
        fault = rounds.get(data.get_header("current_round")) if site == bad_site else None
        if fault:
            diff = diff_of(data)
            first = sorted(diff)[0]
            samples = 100
            if fault == "nan":
                diff[first][...] = np.nan
            elif fault == "shape":
                diff[first] = np.zeros((3, 3), np.float32)
            elif fault == "zero":
                samples = 0
            result = DXO(DataKind.WEIGHT_DIFF, data=diff, meta={FlipMeta.NUM_SAMPLES: samples}).to_shareable()
        return result

    return answer


@pytest.mark.unit
def test_too_few_good_updates_end_the_run_in_error_naming_the_reason(tmp_path, dev):
    server = standard_server(tmp_path, num_rounds=2, min_clients=2, skip_model_tests=True)
    server.run(answers={FlipTask.TRAIN: misbehaving("site-2", {0: "nan"})})
    assert fatal(server)
    final = server.statuses()[-1]
    assert final["status"] == "ERROR"
    assert "round 1: 1 update(s) accepted, 2 needed (site-2: parameter" in final["reason"]
    assert "holds NaN or Inf" in final["reason"]
    assert server.engine.fired.count(AppEventType.ROUND_STARTED) == 1  # no second round
    # nothing uploaded, nothing deleted: the run folder keeps what the run wrote
    assert server.persist.manifest is None and not (server.run_dir / RunFile.UPLOAD_PENDING).exists()
    assert (server.run_dir / "app_server" / "config").is_dir()
    # DLR's default (delete_local_models_after_aggregation=True): no site's local model was ever written to disk
    assert not (server.run_dir / RunFile.LOCAL_MODELS_DIR).exists()


@pytest.mark.s3
def test_bad_updates_are_excluded_with_reasons_and_the_run_completes(tmp_path, dev, s3_env, caplog):
    caplog.set_level(logging.INFO)
    server = standard_server(
        tmp_path, sites=("site-1", "site-2", "site-3"), num_rounds=4, min_clients=2, skip_model_tests=True
    )
    server.run(answers={FlipTask.TRAIN: misbehaving("site-3", {0: "nan", 1: "shape", 2: "zero"})})
    final = server.statuses()[-1]
    assert final["status"] == "RESULTS_UPLOADED", final
    prefix = run_prefix(server.model_id, final["run_id"])
    verify_run(s3_env._client(), s3_env.bucket, prefix)
    body = s3_env._client().get_object(Bucket=s3_env.bucket, Key=prefix + RunFile.METRICS)["Body"].read()
    rounds = json.loads(body)["rounds"]
    excluded = {r["round"]: r.get("excluded", {}).get("site-3", "") for r in rounds}
    assert "holds NaN or Inf" in excluded[1]
    assert "has shape (3, 3), the global model" in excluded[2]
    assert "num_samples must be a positive integer, got 0" in excluded[3]
    assert [sorted(r["accepted"]) for r in rounds] == [["site-1", "site-2"]] * 3 + [["site-1", "site-2", "site-3"]]
    assert any("round 1: the update of site-3 is excluded: parameter" in r.getMessage() for r in caplog.records)
