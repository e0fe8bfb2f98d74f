"""The prod platform's hub client against the hub replica (real uvicorn server, SQLite): FLIP's routes, names, bodies
and key header; the read-back ``flip status`` uses; what the replica itself answers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from pydantic import SecretStr

from flip.cli import main as flip_cli
from flip.constants import FLLogEvent, ModelStatus, RunStatus
from flip.errors import PlatformError, SettingsError, StatusNotDelivered
from flip.platform.hub import HubPlatform
from tests.replicas.fixtures import HUB_KEY, MODEL_ID, USER_TOKEN, hub, running_hub  # noqa: F401 - fixtures

pytestmark = pytest.mark.http


def raw(hub, method: str, path: str, body=None, headers=None) -> tuple[int, object]:
    """One request to the replica without flip's client (to pin what the replica answers)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(hub.served.url + path, data=data, method=method, headers=headers or {})
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=5) as reply:
            text = reply.read()
            return reply.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


# -- the replica answers as FLIP's hub ------------------------------------------------------------------------------
def test_replica_checks_the_key_before_path_and_body(hub):
    status_path = f"/api/model/{MODEL_ID}/status/RUNNING"
    assert raw(hub, "PUT", status_path) == (401, {"detail": "Not authenticated: internal service key is missing."})
    assert raw(hub, "PUT", "/api/model/not-a-uuid/status/NOPE", headers={"X-Internal-Service-Key": "x"}) == (
        401,
        {"detail": "Invalid internal service key."},
    )
    key = {"X-Internal-Service-Key": HUB_KEY}
    assert raw(hub, "PUT", "/api/model/not-a-uuid/status/RUNNING", headers=key)[0] == 422
    assert raw(hub, "PUT", f"/api/model/{MODEL_ID}/status/TRAINING_STARTED", headers=key)[0] == 422  # renamed
    other = "11111111-2222-3333-4444-555555555555"
    assert raw(hub, "PUT", f"/api/model/{other}/status/RUNNING", headers=key) == (
        404,
        {"detail": f"Model ID: {other} does not exist"},
    )
    assert raw(hub, "POST", f"/api/model/{MODEL_ID}/metrics", {"label": "x"}, key)[0] == 422
    assert (
        raw(
            hub,
            "POST",
            f"/api/model/{MODEL_ID}/logs",
            {"log": "a", "event_type": "ROUND_STARTED", "global_round": 1},
            key,
        )[0]
        == 422
    )
    assert raw(hub, "POST", f"/api/model/{MODEL_ID}/logs", {"event_type": "ROUND_STARTED"}, key)[0] == 422
    assert (
        raw(
            hub,
            "POST",
            f"/api/model/{other}/metrics",
            {"fl_client_name": "site-1", "global_round": 1, "label": "loss", "result": 1.0},
            key,
        )[0]
        == 400
    )
    assert hub.replica.statuses(MODEL_ID) == []


def test_replica_without_a_configured_key_refuses_everything(tmp_path):
    with running_hub(tmp_path, key=None) as unconfigured:
        assert raw(
            unconfigured, "PUT", f"/api/model/{MODEL_ID}/status/RUNNING", headers={"X-Internal-Service-Key": "anything"}
        ) == (401, {"detail": "Internal service auth not configured."})


# -- our lifecycle on FLIP's wire ------------------------------------------------------------------------------------
def test_statuses_reach_the_hub_by_flips_names(hub):
    p = hub.platform()
    for status in (RunStatus.INITIATED, RunStatus.PREPARED, RunStatus.TRAINING_STARTED, RunStatus.RESULTS_UPLOADED):
        p.report_status(MODEL_ID, "job-1", status)
    assert hub.replica.statuses(MODEL_ID) == ["INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    sent = hub.replica.requests()
    assert [(r["method"], r["path"]) for r in sent] == [
        ("PUT", f"/api/model/{MODEL_ID}/status/{s}") for s in ("INITIATED", "PREPARED", "RUNNING", "RESULTS_UPLOADED")
    ]
    for r in sent:
        headers = json.loads(r["headers"])
        assert headers["x-internal-service-key"] == HUB_KEY and "authorization" not in headers and r["body"] == b""


def test_an_error_reason_travels_as_a_failure_log_then_the_status(hub):
    hub.platform().report_status(MODEL_ID, "job-1", RunStatus.ERROR, "site site-1: trainer.py raised ValueError")
    logs = hub.replica.logs(MODEL_ID)
    assert logs[0]["log"] == "run job-1: site site-1: trainer.py raised ValueError" and logs[0]["success"] == 0
    assert logs[0]["fl_client_name"] is None and logs[0]["event_type"] is None
    assert hub.replica.statuses(MODEL_ID) == ["ERROR"]
    assert [r["path"].rsplit("/", 1)[-1] for r in hub.replica.requests()] == ["logs", "ERROR"]


def test_metrics_one_request_per_label_and_not_the_mean(hub):
    p = hub.platform()
    p.report_metrics(MODEL_ID, "job-1", 2, "site-1", {"num_samples": 120, "loss": 0.52, "accuracy": 0.91})
    p.report_metrics(MODEL_ID, "job-1", 2, "global", {"loss": 0.5})  # FLIP's hub has no such client
    rows = hub.replica.metrics(MODEL_ID)
    assert [
        (r["fl_client_name"], r["global_round"], r["label"], r["result"], r["x_value"], r["x_label"]) for r in rows
    ] == [
        ("site-1", 2, "num_samples", 120.0, 2.0, "Global Round"),
        ("site-1", 2, "loss", 0.52, 2.0, "Global Round"),
        ("site-1", 2, "accuracy", 0.91, 2.0, "Global Round"),
    ]
    assert {r["trust"] for r in rows} == {hub.trusts["site-1"]}
    bodies = [json.loads(r["body"]) for r in hub.replica.requests()]
    assert bodies[0] == {"fl_client_name": "site-1", "global_round": 2, "label": "num_samples", "result": 120.0}


def test_round_events_and_site_failures_are_training_logs(hub):
    p = hub.platform()
    p.report_event(MODEL_ID, "job-1", FLLogEvent.ROUND_STARTED, 1, details={"total_rounds": 2})
    p.report_event(MODEL_ID, "job-1", FLLogEvent.CLIENT_RESULT_RECEIVED, 1, site="site-2")
    p.report_event(MODEL_ID, "job-1", FLLogEvent.ROUND_AGGREGATED, 1, details={"returned": 1, "expected": 2})
    p.report_failure(MODEL_ID, "job-1", "site-1", "train failed: trainer.py raised KeyError")
    logs = hub.replica.logs(MODEL_ID)
    assert [
        (r["event_type"], r["global_round"], r["fl_client_name"], r["trust"], r["details"], r["log"], r["success"])
        for r in logs
    ] == [
        ("ROUND_STARTED", 1, None, None, {"total_rounds": 2}, None, 1),
        ("CLIENT_RESULT_RECEIVED", 1, "site-2", hub.trusts["site-2"], None, None, 1),
        ("ROUND_AGGREGATED", 1, None, None, {"returned": 1, "expected": 2}, None, 1),
        (None, None, "site-1", hub.trusts["site-1"], None, "train failed: trainer.py raised KeyError", 0),
    ]
    with pytest.raises(
        PlatformError,
        match=r"not sent to the hub .*global_round of a ROUND_STARTED event must be "
        r"an integer from 1",
    ):
        p.report_event(MODEL_ID, "job-1", FLLogEvent.ROUND_STARTED, 0)
    with pytest.raises(PlatformError, match=r"event_type must be one of"):
        p.report_event(MODEL_ID, "job-1", FLLogEvent.QUEUE_POSITION, 1)


def test_flips_own_hub_calls_send_flips_shapes(hub, caplog):
    p = hub.platform()
    p.update_status(MODEL_ID, ModelStatus.RESULTS_UPLOAD_FAILED)
    p.update_status(MODEL_ID, ModelStatus.TRAINING_STARTED)  # FLIP's older name of RUNNING
    p.send_metrics("site-2", MODEL_ID, "DL_RESULT", 0.75, 3)
    trace = "Traceback (most recent call last):\n  File \"/data/patients/PATIENT-1/x.py\"\nKeyError: 'label'"
    p.send_handled_exception(trace, "site-2", MODEL_ID)
    p.send_event(MODEL_ID, "ROUND_STARTED", 1, details={"total_rounds": 3})
    assert hub.replica.statuses(MODEL_ID) == ["RESULTS_UPLOAD_FAILED", "RUNNING"]
    assert [(m["label"], m["result"], m["global_round"]) for m in hub.replica.metrics(MODEL_ID)] == [
        ("DL_RESULT", 0.75, 3)
    ]
    logs = [r for r in hub.replica.logs(MODEL_ID) if r["fl_client_name"] == "site-2"]
    assert logs[0]["log"] == "KeyError: 'label'" and logs[0]["success"] == 0  # no trace, no path
    assert "PATIENT-1" not in json.dumps(hub.replica.logs(MODEL_ID))
    p.send_metrics("site-2", MODEL_ID, "loss", float("nan"), 1)  # FLIP's hub would store NaN: flip logs, sends not
    assert "result of 'loss' must be a finite number" in caplog.text and len(hub.replica.metrics(MODEL_ID)) == 1


def test_the_key_header_is_the_one_the_hub_checks(tmp_path):
    with running_hub(tmp_path, header="X-Flip-Hub-Key") as other:
        with pytest.raises(PlatformError, match=r"hub refused the API key \(HTTP 401\): check INTERNAL_SERVICE_KEY"):
            other.platform().report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
        other.platform(key_header="X-Flip-Hub-Key").report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
        assert other.replica.statuses(MODEL_ID) == ["INITIATED"]


def test_the_key_can_come_from_a_file_only_the_server_reads(hub, tmp_path):
    key_file = tmp_path / "hub.key"
    key_file.write_text(HUB_KEY + "\n")
    p = hub.platform(key=None, key_file=key_file)
    assert HUB_KEY not in repr(p)
    p.require_hub()
    p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    assert hub.replica.statuses(MODEL_ID) == ["INITIATED"]
    with pytest.raises(SettingsError, match=r"INTERNAL_SERVICE_KEY_FILE: cannot read .*missing.key"):
        hub.platform(key=None, key_file=tmp_path / "missing.key").require_hub()


def test_an_unknown_model_is_named(hub):
    other = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(
        PlatformError,
        match=rf"hub rejected PUT /api/model/{other}/status/PREPARED \(HTTP 404: the "
        r"hub has no such model\)",
    ):
        hub.platform().report_status(other, "job-1", RunStatus.PREPARED)


def test_server_errors_are_retried_with_backoff(hub):
    hub.replica.faults.fail = 2
    started = time.monotonic()
    hub.platform(attempts=4).report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    assert len(hub.replica.requests()) == 3 and hub.replica.statuses(MODEL_ID) == ["INITIATED"]
    assert time.monotonic() - started >= 0.05 + 0.1


def test_a_slow_hub_times_out_and_the_failure_is_named(hub):
    hub.replica.faults.slow = 1.0
    with pytest.raises(PlatformError, match=r"hub unreachable after 2 attempts \((timeout|TimeoutError)"):
        hub.platform(timeout=0.2, attempts=2).report_status(MODEL_ID, "job-1", RunStatus.PREPARED)


def test_after_a_failure_reports_are_held_off_but_a_final_status_is_tried(hub):
    p = hub.platform(attempts=1)
    hub.replica.faults.fail = 1
    with pytest.raises(PlatformError, match=r"hub unreachable after 1 attempt \(HTTP 500\)"):
        p.report_metrics(MODEL_ID, "job-1", 1, "site-1", {"loss": 1.0})
    before = len(hub.replica.requests())
    with pytest.raises(PlatformError, match=r"hub not asked .*held off for 30 s after a failure"):
        p.report_event(MODEL_ID, "job-1", FLLogEvent.ROUND_STARTED, 2)
    assert len(hub.replica.requests()) == before  # not attempted
    p.report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED)  # final: always tried
    p.report_metrics(MODEL_ID, "job-1", 2, "site-1", {"loss": 0.5})  # the hub answered: reports resume
    assert hub.replica.statuses(MODEL_ID) == ["RESULTS_UPLOADED"] and len(hub.replica.metrics(MODEL_ID)) == 1


# -- reading a model back: flip status ---------------------------------------------------------------------------------
def test_flip_status_reads_statuses_metrics_and_failures_from_the_hub(hub, monkeypatch, capsys):
    p = hub.platform()
    p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    p.report_status(MODEL_ID, "job-1", RunStatus.PREPARED)
    p.report_status(MODEL_ID, "job-1", RunStatus.TRAINING_STARTED)
    for round_num in (1, 2):
        for site, accuracy in (("site-1", 0.8), ("site-2", 0.9)):
            p.report_metrics(MODEL_ID, "job-1", round_num, site, {"accuracy": accuracy + round_num / 100})
    p.report_failure(MODEL_ID, "job-1", "site-2", "validate failed: validator.py raised KeyError")
    p.report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED)
    assert [s["status"] for s in p.read_statuses(MODEL_ID)] == ["PENDING", "PREPARED", "RUNNING", "RESULTS_UPLOADED"]
    assert {(m["round"], m["site"]) for m in p.read_metrics(MODEL_ID)} == {(r, f"T{s}") for r in (1, 2) for s in (1, 2)}
    for var, value in {
        "FLIP_ENV": "prod",
        "FLIP_API_INTERNAL_URL": hub.url,
        "FLIP_HUB_USER_TOKEN": USER_TOKEN,
        "FLIP_LOCAL_DIR": str(hub.tmp / "server"),
    }.items():
        monkeypatch.setenv(var, value)
    assert flip_cli(["status", MODEL_ID]) == 0
    out = capsys.readouterr().out
    assert out.index("PREPARED") < out.index("RUNNING") < out.index("RESULTS_UPLOADED")
    assert "metrics of round 2:" in out and "T1: accuracy=0.82" in out and "T2: accuracy=0.92" in out
    assert "failure Trust 2: validate failed: validator.py raised KeyError" in out
    assert USER_TOKEN not in out and HUB_KEY not in out
    monkeypatch.delenv("FLIP_HUB_USER_TOKEN")
    assert flip_cli(["status", MODEL_ID]) == 2
    assert "set FLIP_HUB_USER_TOKEN" in capsys.readouterr().err


def test_an_undelivered_final_status_is_recorded_shown_and_resent(hub, monkeypatch, capsys):
    hub.replica.faults.reject_status = {"RESULTS_UPLOADED"}
    p = hub.platform(attempts=2)
    p.report_status(MODEL_ID, "job-1", RunStatus.TRAINING_STARTED)
    with pytest.raises(
        StatusNotDelivered,
        match=r"hub unreachable after 2 attempts \(HTTP 500\).*final status "
        r"RESULTS_UPLOADED recorded in .*hub_outbox.json",
    ) as err:
        p.report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED)
    assert err.value.recorded == hub.tmp / "server" / "hub_outbox.json"
    assert [(r["run_id"], r["status"]) for r in p.undelivered(MODEL_ID)] == [("job-1", "RESULTS_UPLOADED")]
    for var, value in {
        "FLIP_ENV": "prod",
        "FLIP_API_INTERNAL_URL": hub.url,
        "FLIP_HUB_USER_TOKEN": USER_TOKEN,
        "INTERNAL_SERVICE_KEY": HUB_KEY,
        "FLIP_LOCAL_DIR": str(hub.tmp / "server"),
        "FLIP_HUB_RETRIES": "1",
    }.items():
        monkeypatch.setenv(var, value)
    assert flip_cli(["status", MODEL_ID]) == 0
    out = capsys.readouterr().out
    assert "RUNNING" in out and "not delivered to the hub: RESULTS_UPLOADED of run job-1" in out
    assert f"flip status {MODEL_ID} --resend" in out
    assert flip_cli(["status", MODEL_ID, "--resend"]) == 2  # the hub still refuses it: named, still recorded
    assert "hub unreachable after 1 attempt (HTTP 500)" in capsys.readouterr().err
    hub.replica.faults.reject_status = set()
    assert flip_cli(["status", MODEL_ID, "--resend"]) == 0
    out = capsys.readouterr().out
    assert "resent RESULTS_UPLOADED of run job-1 to the hub" in out and "not delivered" not in out
    assert hub.replica.statuses(MODEL_ID)[-1] == "RESULTS_UPLOADED" and p.undelivered(MODEL_ID) == []


def test_hub_platform_repr_and_errors_never_hold_the_keys(hub):
    p = HubPlatform(hub.url, SecretStr(HUB_KEY), hub.tmp, user_token=SecretStr(USER_TOKEN), timeout=1.0, attempts=1)
    assert HUB_KEY not in repr(p) and USER_TOKEN not in repr(p)
    with pytest.raises(PlatformError) as err:
        HubPlatform(hub.url, SecretStr("wrong"), hub.tmp, attempts=1).report_status(MODEL_ID, "j", RunStatus.PREPARED)
    assert "wrong" not in str(err.value)
