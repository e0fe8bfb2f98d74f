"""The dev platform's record of round events and failures (logs.jsonl), the same checks as FLIP's TrainingLog, and
`flip status` showing a run's failures."""

from __future__ import annotations

import pytest

from flip.cli import main as flip_cli
from flip.constants import FLLogEvent, RunStatus
from flip.errors import PlatformError
from flip.platform.dev import LOGS_FILE, LocalPlatform

pytestmark = pytest.mark.unit

MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"


def test_dev_records_events_and_failures_in_order(tmp_path):
    p = LocalPlatform(tmp_path)
    p.report_event(MODEL_ID, "job-1", FLLogEvent.ROUND_STARTED, 1, details={"total_rounds": 2})
    p.report_event(MODEL_ID, "job-1", FLLogEvent.CLIENT_RESULT_RECEIVED, 1, site="site-1")
    p.report_failure(MODEL_ID, "job-1", "site-2", "train failed: trainer.py raised KeyError")
    logs = p.read_logs(MODEL_ID)
    assert [(r["site"], r["text"], r["success"]) for r in logs] == [
        (None, "ROUND_STARTED", True),
        ("site-1", "CLIENT_RESULT_RECEIVED", True),
        ("site-2", "train failed: trainer.py raised KeyError", False),
    ]
    assert logs[0]["details"] == {"total_rounds": 2} and p.read_logs("11111111-2222-3333-4444-555555555555") == []


@pytest.mark.parametrize(
    "event, round_num, why",
    [
        ("QUEUE_POSITION", 1, "event_type must be one of"),
        ("ROUND_STARTED", 0, "must be an integer from 1"),
        ("ROUND_STARTED", True, "must be an integer from 1"),
        ("NOT_AN_EVENT", 1, "event_type must be one of"),
    ],
)
def test_dev_refuses_what_flips_hub_would_refuse(tmp_path, event, round_num, why):
    with pytest.raises(PlatformError, match=rf"not recorded in {LOGS_FILE}: .*{why}"):
        LocalPlatform(tmp_path).report_event(MODEL_ID, "job-1", event, round_num)
    with pytest.raises(PlatformError, match="log text must be a non-empty string"):
        LocalPlatform(tmp_path).report_failure(MODEL_ID, "job-1", "site-1", "")
    assert not (tmp_path / LOGS_FILE).exists()


def test_flip_status_shows_a_runs_failures(tmp_path, monkeypatch, capsys):
    p = LocalPlatform(tmp_path)
    p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    p.report_failure(MODEL_ID, "job-1", "site-2", "validate failed: validator.py raised KeyError")
    p.report_status(MODEL_ID, "job-1", RunStatus.ERROR, "site site-2: validate failed")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    assert flip_cli(["status", MODEL_ID]) == 0
    out = capsys.readouterr().out
    assert "failure site-2: validate failed: validator.py raised KeyError" in out
    assert out.index("INITIATED") < out.index("failure site-2") and "ERROR: site site-2: validate failed" in out
    assert flip_cli(["status", MODEL_ID, "--resend"]) == 0  # dev delivers at once: nothing to resend
    assert "nothing to resend" in capsys.readouterr().out
