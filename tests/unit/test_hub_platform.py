"""The prod platform against a real HTTP hub on 127.0.0.1: timeouts, retries, refusals, never the key."""

from __future__ import annotations

import io
import time

import pytest
import torch
from pydantic import SecretStr

from flip import FLIP
from flip.constants import RunStatus
from flip.errors import PlatformError, SettingsError
from flip.platform.hub import HubPlatform
from tests.hub_server import HubServer

pytestmark = pytest.mark.unit  # a hub replica on 127.0.0.1 (tests/hub_server.py), no S3

MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"
KEY = "hub-key-that-must-never-show"


@pytest.fixture
def hub():
    with HubServer(api_key=KEY) as server:
        yield server


def platform(hub, tmp_path, key=KEY, **kwargs):
    kwargs.setdefault("timeout", 1.0)
    kwargs.setdefault("backoff", 0.05)
    return HubPlatform(hub.url, SecretStr(key), tmp_path, **kwargs)


def test_status_and_metrics_reach_the_hub(hub, tmp_path):
    p = platform(hub, tmp_path)
    p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    p.report_status(MODEL_ID, "job-1", RunStatus.ERROR, "site site-1: trainer failed")
    p.report_metrics(MODEL_ID, "job-1", 2, "site-1", {"accuracy": 0.9, "num_samples": 10})
    statuses = p.read_statuses(MODEL_ID)
    assert [(s["status"], s.get("reason"), s["run_id"]) for s in statuses] == [
        ("INITIATED", None, "job-1"), ("ERROR", "site site-1: trainer failed", "job-1")]
    assert p.read_metrics(MODEL_ID)[0]["metrics"] == {"accuracy": 0.9, "num_samples": 10}
    assert all(KEY.encode() not in body for body in hub.bodies)


def test_wrong_key_is_refused_without_retrying_and_never_shown(hub, tmp_path):
    p = platform(hub, tmp_path, key="wrong-key-also-secret")
    with pytest.raises(PlatformError, match=r"hub refused the API key \(HTTP 401\): check FLIP_HUB_API_KEY") as err:
        p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    assert "wrong-key-also-secret" not in str(err.value) and KEY not in repr(p)
    assert len(hub.paths) == 1


def test_server_errors_are_retried_with_backoff(hub, tmp_path):
    hub.fail = 2
    started = time.monotonic()
    platform(hub, tmp_path, attempts=4).report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    assert len(hub.paths) == 3 and hub.statuses(MODEL_ID)[0]["status"] == "INITIATED"
    assert time.monotonic() - started >= 0.05 + 0.1  # backoff 0.05 s then 0.1 s


def test_persistent_server_errors_fail_with_a_short_cause(hub, tmp_path):
    hub.fail = 10
    with pytest.raises(PlatformError, match=r"hub unreachable after 3 attempts \(HTTP 500\)"):
        platform(hub, tmp_path, attempts=3).report_metrics(MODEL_ID, "job-1", 1, "site-1", {"loss": 1.0})
    assert len(hub.paths) == 3


def test_a_dropped_connection_is_retried(hub, tmp_path):
    hub.drop = 1
    platform(hub, tmp_path).report_status(MODEL_ID, "job-1", RunStatus.PREPARED)
    assert [s["status"] for s in hub.statuses(MODEL_ID)] == ["PREPARED"]
    assert len(hub.paths) == 2


def test_a_slow_hub_times_out_and_the_failure_is_surfaced(hub, tmp_path):
    hub.slow = 1.0
    with pytest.raises(PlatformError, match=r"hub unreachable after 2 attempts \((timeout|TimeoutError)"):
        platform(hub, tmp_path, timeout=0.2, attempts=2).report_status(MODEL_ID, "job-1", RunStatus.INITIATED)


def test_an_unreachable_hub_fails_after_its_attempts(tmp_path):
    p = HubPlatform("http://127.0.0.1:9", SecretStr(KEY), tmp_path, timeout=0.5, attempts=2, backoff=0.01)
    with pytest.raises(PlatformError, match=r"hub unreachable after 2 attempts \(ConnectionRefusedError\)"):
        p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)


def test_initial_model_is_fetched_into_the_safehouse_cache(hub, tmp_path):
    p = platform(hub, tmp_path)
    assert p.initial_model_path(MODEL_ID) is None  # 404: the hub has none
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    hub.initial_models[MODEL_ID] = buffer.getvalue()
    path = p.initial_model_path(MODEL_ID)
    assert path == tmp_path.resolve() / "safehouse" / MODEL_ID / "initial_model.pt"
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(2))


def test_the_server_needs_url_and_key_but_a_site_does_not(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIP_ENV", "prod")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path))
    site = FLIP()  # a site in prod holds no hub key: creating its platform works
    assert isinstance(site, HubPlatform) and site.site_images_dir("site-1", "job").parts[-2:] == ("site-1", "job")
    with pytest.raises(SettingsError, match="the server needs FLIP_HUB_URL, FLIP_HUB_API_KEY to reach the hub"):
        site.require_hub()
