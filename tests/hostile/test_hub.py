"""Hostile inputs to the prod platform's hub client (issue 14, items 5-7), against real HTTP servers on 127.0.0.1.

Each test failed on the code before the fix (checked by running this file with the old flip/ and the new
tests/hub_server.py); the docstrings say how.
"""

from __future__ import annotations

import time

import pytest
from nvflare.apis.fl_context import FLContext
from pydantic import SecretStr

from flip.constants import RunStatus
from flip.errors import PlatformError, SettingsError
from flip.nvflare.components.server_event_handler import ServerEventHandler
from flip.platform.hub import HubPlatform
from flip.settings import load_settings
from tests.hub_server import CatchAllServer, HubServer

pytestmark = pytest.mark.unit  # no S3, no simulator: in-process HTTP servers on 127.0.0.1 only

MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"
KEY = "hub-key-that-must-never-travel"
PASSWORD = "pa55w0rd-never-shown"


@pytest.fixture
def hub():
    with HubServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def elsewhere():
    """Another host:port a redirect points to; it records what it receives."""
    with CatchAllServer() as server:
        yield server


def platform(hub, tmp_path, **kwargs):
    kwargs.setdefault("timeout", 1.0)
    kwargs.setdefault("backoff", 0.05)
    return HubPlatform(hub.url, SecretStr(KEY), tmp_path, **kwargs)


def prod_settings(monkeypatch, **env):
    monkeypatch.setenv("FLIP_ENV", "prod")
    monkeypatch.setenv("FLIP_HUB_API_KEY", KEY)
    monkeypatch.setenv("FLIP_HUB_URL", "https://hub.example.org")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


# -- item 5: redirects and URLs ------------------------------------------------------------------------------------
CALLS = {
    "POST status": lambda p: p.report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED),
    "GET statuses": lambda p: p.read_statuses(MODEL_ID),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_is_refused_and_key_not_forwarded(hub, elsewhere, tmp_path, code, call):
    """Before: urllib followed 301/302/303 of a POST as a body-less GET (whose 200 counted as delivered) and every
    redirect of a GET, re-sending the Authorization header to the other host; a 307/308 POST came out as 'hub
    rejected' without naming the redirect."""
    hub.redirect = (code, f"http://127.0.0.1:{elsewhere.port}/api/v1/landing")
    with pytest.raises(PlatformError, match=rf"redirect \(HTTP {code}\)") as err:
        CALLS[call](platform(hub, tmp_path))
    assert elsewhere.requests == []  # never followed: no key, no converted GET, nothing
    assert len(hub.paths) == 1  # never re-sent to the hub either
    assert KEY not in str(err.value)


def test_redirect_error_names_location_host(hub, elsewhere, tmp_path):
    """Before: the 302 was followed to localhost (a GET answered 200), so report_status returned as if delivered."""
    hub.redirect = (302, f"http://localhost:{elsewhere.port}/collect?sig=QUERY-SECRET")
    with pytest.raises(PlatformError) as err:
        platform(hub, tmp_path).report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED)
    message = str(err.value)
    assert f"'localhost:{elsewhere.port}'" in message and "FLIP_HUB_URL" in message
    assert "QUERY-SECRET" not in message and "/collect" not in message and KEY not in message
    assert elsewhere.requests == []


@pytest.mark.parametrize("url", ["http://hub.example.org", "http://10.0.0.5:8080/flip", "http://127.0.0.1.evil.example",
                                 "http://0.0.0.0:8080", "ftp://hub.example.org"])
def test_plain_http_hub_url_refused_unless_loopback(monkeypatch, tmp_path, url):
    """Before: any http:// URL was accepted and the key went out in clear text (ftp:// was refused already)."""
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL .* is invalid: .*https") as err:
        prod_settings(monkeypatch, FLIP_HUB_URL=url)
    assert KEY not in str(err.value)
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL"):
        HubPlatform(url, SecretStr(KEY), tmp_path)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://127.4.5.6", "http://[::1]:8080/flip",
                                 "http://localhost:8080", "HTTP://LOCALHOST", "https://hub.example.org/flip/"])
def test_https_and_loopback_http_hub_urls_accepted(monkeypatch, tmp_path, url):
    """The accepting side of the rule above (passed before too)."""
    assert prod_settings(monkeypatch, FLIP_HUB_URL=url).hub_url == url.rstrip("/")
    assert HubPlatform(url, SecretStr(KEY), tmp_path).hub_url == url.rstrip("/")


@pytest.mark.parametrize("url", [f"https://flip:{PASSWORD}@hub.example.org", f"https://{PASSWORD}@hub.example.org",
                                 f"https://hub.example.org:{PASSWORD}@evil.example",
                                 f"https://flip:{PASSWORD}/x@hub.example.org", f"http://flip:{PASSWORD}@127.0.0.1"])
def test_hub_url_with_credentials_refused(monkeypatch, tmp_path, url):
    """Before: user:password@ URLs were accepted (and the old message echoed the whole URL)."""
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL .* user name or password") as err:
        prod_settings(monkeypatch, FLIP_HUB_URL=url)
    assert PASSWORD not in str(err.value)
    with pytest.raises(SettingsError) as err:
        HubPlatform(url, SecretStr(KEY), tmp_path)
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value.__cause__)


@pytest.mark.parametrize("url, bad", [("https://hub.example.org\n", "'\\n' at position 23"),
                                      ("https://hub.example.org\nX-Injected: 1", "'\\n' at position 23"),
                                      ("https://hub.example.org/\r\n", "'\\r' at position 24"),
                                      ("https://hub.exa mple.org", "' ' at position 15"),
                                      ("https://hub.example.org\t", "'\\t' at position 23"),
                                      ("https://hub.example.org/\u200b", "'\\u200b' at position 24")])
def test_hub_url_with_newline_refused(monkeypatch, tmp_path, url, bad):
    """Before: the check was a `^`-anchored match on the start, so a newline (or a space in the path) passed."""
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL .* is invalid") as err:
        prod_settings(monkeypatch, FLIP_HUB_URL=url)
    assert f"it contains {bad}" in str(err.value)
    with pytest.raises(SettingsError, match="FLIP_HUB_URL"):
        HubPlatform(url, SecretStr(KEY), tmp_path)


def test_hub_url_with_query_or_without_host_refused(monkeypatch):
    """Before: 'https://?x' and a query on the base URL (later followed by the API path) were accepted."""
    for url, why in [("https://hub.example.org?token=QUERY-SECRET", "no query or fragment"),
                     ("https://hub.example.org#frag", "no query or fragment"),
                     ("https://:8443/flip", "names no host"), ("https://hub\\evil.example", "not a DNS name")]:
        with pytest.raises(SettingsError, match=f"FLIP_HUB_URL: hub URL .*{why}") as err:
            prod_settings(monkeypatch, FLIP_HUB_URL=url)
        assert "QUERY-SECRET" not in str(err.value)


# -- item 6: timeout, retries, backoff -------------------------------------------------------------------------------
def _timeout_refused(monkeypatch, tmp_path, value: str):
    with pytest.raises(SettingsError, match=r"FLIP_HUB_TIMEOUT: hub timeout must be a number of seconds > 0 and "
                                            r"<= 300, got ") as err:
        prod_settings(monkeypatch, FLIP_HUB_TIMEOUT=value)
    assert KEY not in str(err.value)
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds > 0 and <= 300"):
        HubPlatform("https://hub.example.org", SecretStr(KEY), tmp_path, timeout=float(value))


def test_hub_timeout_inf_refused(monkeypatch, tmp_path):
    """Before: inf passed `gt=0` and every request could wait for ever."""
    _timeout_refused(monkeypatch, tmp_path, "inf")


def test_hub_timeout_nan_refused(monkeypatch, tmp_path):
    """Before: the settings refused NaN only with pydantic's generic message; HubPlatform took timeout=nan."""
    _timeout_refused(monkeypatch, tmp_path, "nan")


def test_hub_timeout_0_refused(monkeypatch, tmp_path):
    """Before: the settings refused 0 with pydantic's 'greater than 0' (no upper bound named); HubPlatform took 0."""
    _timeout_refused(monkeypatch, tmp_path, "0")


def test_hub_timeout_huge_refused(monkeypatch, tmp_path):
    """Before: 1e9 seconds (about 32 years) per request was accepted."""
    _timeout_refused(monkeypatch, tmp_path, "1e9")
    _timeout_refused(monkeypatch, tmp_path, "300.5")
    assert prod_settings(monkeypatch, FLIP_HUB_TIMEOUT="300").hub_timeout == 300.0


@pytest.mark.parametrize("value", ["0", "-1", "11", "1000000"])
def test_hub_retries_bounded(monkeypatch, tmp_path, value):
    """Before: any count >= 1 was accepted (a million attempts with doubling sleeps); HubPlatform turned 0 into 1."""
    with pytest.raises(SettingsError, match=rf"FLIP_HUB_RETRIES: hub retries must be an integer from 1 to 10 "
                                            rf"\(attempts in all\), got {value}"):
        prod_settings(monkeypatch, FLIP_HUB_RETRIES=value)
    with pytest.raises(ValueError, match="attempts must be an integer from 1 to 10"):
        HubPlatform("https://hub.example.org", SecretStr(KEY), tmp_path, attempts=int(value))
    assert prod_settings(monkeypatch, FLIP_HUB_RETRIES="10").hub_retries == 10


def test_backoff_is_capped(hub, tmp_path):
    """Before: the sleep doubled without a cap (0.5 s * 2**8 = 128 s before a 10th attempt) and there was no
    backoff_delays and no max_sleep. Now each sleep is at most 8 s (max_sleep), measured on an always-failing hub."""
    from flip.platform.http import MAX_SLEEP, backoff_delays

    assert MAX_SLEEP == 8.0
    assert backoff_delays(10, 0.5) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert max(backoff_delays(10, 8.0)) == 8.0 and backoff_delays(1, 0.5) == []
    hub.fail = 100
    started = time.monotonic()
    with pytest.raises(PlatformError, match=r"hub unreachable after 5 attempts \(HTTP 500\)"):
        platform(hub, tmp_path, attempts=5, backoff=0.2, max_sleep=0.3).report_metrics(
            MODEL_ID, "job-1", 1, "site-1", {"loss": 1.0})
    slept = time.monotonic() - started
    assert 0.2 + 3 * 0.3 <= slept < 2.0  # capped: 0.2, 0.3, 0.3, 0.3; uncapped: 0.2 + 0.4 + 0.8 + 1.6 = 3.0
    assert len(hub.paths) == 5
    with pytest.raises(ValueError, match=r"max_sleep must be a number of seconds from 0 to 8"):
        platform(hub, tmp_path, max_sleep=60)


def test_request_deadline_bounds_the_total_time(hub, tmp_path):
    """Before: 10 attempts of a slow hub took 10 timeouts plus the sleeps; there was no deadline."""
    hub.slow = 3.0
    started = time.monotonic()
    with pytest.raises(PlatformError, match=r"hub unreachable after [1-4] attempts? .*gave up at the 1 s deadline"):
        platform(hub, tmp_path, timeout=0.4, attempts=10, deadline=1.0).report_status(
            MODEL_ID, "job-1", RunStatus.INITIATED)
    assert time.monotonic() - started < 1.8


# -- item 7: a status recorded but answered late ---------------------------------------------------------------------
def test_status_recorded_after_timeout_retry_409_is_success(hub, tmp_path):
    """Before: the retry's 409 raised 'hub rejected ... (HTTP 409)' although the hub holds RESULTS_UPLOADED."""
    hub.late, hub.late_delay = 1, 1.5  # record, then answer after the client's 0.3 s timeout
    platform(hub, tmp_path, timeout=0.3, attempts=3).report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED)
    assert [s["status"] for s in hub.statuses(MODEL_ID)] == ["RESULTS_UPLOADED"]
    assert len(hub.paths) == 2  # the first attempt (recorded, answered late) and the retry (409)


def test_status_recorded_after_timeout_run_ends_results_uploaded(hub, tmp_path):
    """The same at the server's status lifecycle: before, the 409 made ServerEventHandler end the run in ERROR and
    send ERROR to a hub that holds RESULTS_UPLOADED."""
    handler = ServerEventHandler(model_id=MODEL_ID)
    handler.platform = platform(hub, tmp_path, timeout=0.3, attempts=3)
    handler.run_id = "job-1"
    hub.late, hub.late_delay = 1, 1.5
    handler.report_status(FLContext(), RunStatus.RESULTS_UPLOADED)
    assert handler.final_status == RunStatus.RESULTS_UPLOADED and handler.reported == [RunStatus.RESULTS_UPLOADED]
    assert [s["status"] for s in hub.statuses(MODEL_ID)] == ["RESULTS_UPLOADED"]


def test_status_409_on_the_first_attempt_is_a_failure(hub, tmp_path):
    """A 409 without an earlier attempt is the hub's refusal, not a lost answer: still a named failure."""
    p = platform(hub, tmp_path)
    p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    with pytest.raises(PlatformError, match=rf"hub rejected POST /api/v1/models/{MODEL_ID}/runs/job-1/status "
                                            r"\(HTTP 409\)"):
        p.report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    assert len(hub.paths) == 2  # a 409 is not retried
