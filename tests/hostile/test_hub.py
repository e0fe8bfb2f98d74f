"""Hostile inputs to the prod platform's hub client, against the hub replica (tests/replicas: FLIP's routes on a
real uvicorn server on 127.0.0.1) and another host that records what it gets.

Issue 14 (items 5-7: redirects, URLs, timeouts, retries, a status answered late) failed on the code before its fixes
(checked by running this file with the old flip/); the rules stand on FLIP's protocol now (issue 17). Issue 17's
tests (hub down at START_RUN, mid-run and at the final status; FLIP's and our variables disagreeing; a key header or
bucket that is not one) failed on the code before it: the old client spoke another API (POST /api/v1/..., Bearer),
had no outbox, no holdoff and no FLIP names; the docstrings say what each guards.
"""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from pydantic import SecretStr

from flip.constants import RunStatus
from flip.errors import PlatformError, SettingsError
from flip.nvflare.components.server_event_handler import ServerEventHandler
from flip.platform.hub import HubPlatform
from flip.settings import load_settings
from tests.elsewhere_server import CatchAllServer
from tests.replicas.fixtures import HUB_KEY, MODEL_ID, running_hub
from tests.unit.conftest import FakeEngine

pytestmark = pytest.mark.http  # the hub replica (uvicorn) and another server on 127.0.0.1

KEY = HUB_KEY
PASSWORD = "pa55w0rd-never-shown"


@pytest.fixture
def hub(tmp_path):
    with running_hub(tmp_path / "hub") as running:
        yield running


@pytest.fixture
def elsewhere():
    """Another host:port a redirect points to; it records what it receives."""
    with CatchAllServer() as server:
        yield server


def platform(hub, **kwargs):
    return hub.platform(**kwargs)


def prod_settings(monkeypatch, **env):
    monkeypatch.setenv("FLIP_ENV", "prod")
    monkeypatch.setenv("FLIP_HUB_API_KEY", KEY)
    monkeypatch.setenv("FLIP_HUB_URL", "https://hub.example.org/api")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- item 5: redirects and URLs ------------------------------------------------------------------------------------
CALLS = {
    "PUT status": lambda p: p.report_status(MODEL_ID, "job-1", RunStatus.PREPARED),
    "POST metrics": lambda p: p.report_metrics(MODEL_ID, "job-1", 1, "site-1", {"loss": 1.0}),
    "GET metrics": lambda p: p.read_metrics(MODEL_ID),
}


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_is_refused_and_key_not_forwarded(hub, elsewhere, code, call):
    """Before: urllib followed 301/302/303 of a POST as a body-less GET (whose 200 counted as delivered) and every
    redirect of a GET, re-sending the Authorization header to the other host; a 307/308 POST came out as 'hub
    rejected' without naming the redirect."""
    hub.replica.faults.redirect = (code, f"http://127.0.0.1:{elsewhere.port}/api/landing")
    with pytest.raises(PlatformError, match=rf"redirect \(HTTP {code}\)") as err:
        CALLS[call](platform(hub))
    assert elsewhere.requests == []  # never followed: no key, no converted GET, nothing
    assert len(hub.replica.requests()) == 1  # never re-sent to the hub either
    assert KEY not in str(err.value)


def test_redirect_error_names_location_host(hub, elsewhere):
    """Before: the 302 was followed to localhost (a GET answered 200), so report_status returned as if delivered."""
    hub.replica.faults.redirect = (302, f"http://localhost:{elsewhere.port}/collect?sig=QUERY-SECRET")
    with pytest.raises(PlatformError) as err:
        platform(hub).report_status(MODEL_ID, "job-1", RunStatus.PREPARED)
    message = str(err.value)
    assert f"'localhost:{elsewhere.port}'" in message and "FLIP_API_INTERNAL_URL" in message
    assert "QUERY-SECRET" not in message and "/collect" not in message and KEY not in message
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://hub.example.org/api",
        "http://10.0.0.5:8080/flip",
        "http://127.0.0.1.evil.example/api",
        "http://0.0.0.0:8080/api",
        "ftp://hub.example.org/api",
    ],
)
def test_plain_http_hub_url_refused_unless_loopback(monkeypatch, tmp_path, url):
    """Before: any http:// URL was accepted and the key went out in clear text (ftp:// was refused already)."""
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL .* is invalid: .*https") as err:
        prod_settings(monkeypatch, FLIP_HUB_URL=url)
    assert KEY not in str(err.value)
    with pytest.raises(SettingsError, match=r"FLIP_API_INTERNAL_URL: hub URL"):
        HubPlatform(url, SecretStr(KEY), tmp_path)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/api",
        "http://127.4.5.6/api",
        "http://[::1]:8080/flip",
        "http://localhost:8080/api",
        "HTTP://LOCALHOST/api",
        "https://hub.example.org/flip/",
    ],
)
def test_https_and_loopback_http_hub_urls_accepted(monkeypatch, tmp_path, url):
    """The accepting side of the rule above (passed before too)."""
    assert prod_settings(monkeypatch, FLIP_HUB_URL=url).hub_url == url.rstrip("/")
    assert HubPlatform(url, SecretStr(KEY), tmp_path).hub_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        f"https://flip:{PASSWORD}@hub.example.org/api",
        f"https://{PASSWORD}@hub.example.org/api",
        f"https://hub.example.org:{PASSWORD}@evil.example/api",
        f"https://flip:{PASSWORD}/x@hub.example.org",
        f"http://flip:{PASSWORD}@127.0.0.1/api",
    ],
)
def test_hub_url_with_credentials_refused(monkeypatch, tmp_path, url):
    """Before: user:password@ URLs were accepted (and the old message echoed the whole URL)."""
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL .* user name or password") as err:
        prod_settings(monkeypatch, FLIP_HUB_URL=url)
    assert PASSWORD not in str(err.value)
    with pytest.raises(SettingsError) as err:
        HubPlatform(url, SecretStr(KEY), tmp_path)
    assert PASSWORD not in str(err.value) and PASSWORD not in repr(err.value.__cause__)


@pytest.mark.parametrize(
    "url, bad",
    [
        ("https://hub.example.org/api\n", "'\\n' at position 27"),
        ("https://hub.example.org/api\nX-Injected: 1", "'\\n' at position 27"),
        ("https://hub.example.org/api/\r\n", "'\\r' at position 28"),
        ("https://hub.exa mple.org/api", "' ' at position 15"),
        ("https://hub.example.org/api\t", "'\\t' at position 27"),
        ("https://hub.example.org/api/\u200b", "'\\u200b' at position 28"),
    ],
)
def test_hub_url_with_newline_refused(monkeypatch, tmp_path, url, bad):
    """Before: the check was a `^`-anchored match on the start, so a newline (or a space in the path) passed."""
    with pytest.raises(SettingsError, match=r"FLIP_HUB_URL: hub URL .* is invalid") as err:
        prod_settings(monkeypatch, FLIP_HUB_URL=url)
    assert f"it contains {bad}" in str(err.value)
    with pytest.raises(SettingsError, match="FLIP_API_INTERNAL_URL"):
        HubPlatform(url, SecretStr(KEY), tmp_path)


def test_hub_url_with_query_or_without_host_refused(monkeypatch):
    """Before: 'https://?x' and a query on the base URL (later followed by the API path) were accepted."""
    for url, why in [
        ("https://hub.example.org/api?token=QUERY-SECRET", "no query or fragment"),
        ("https://hub.example.org/api#frag", "no query or fragment"),
        ("https://:8443/flip", "names no host"),
        ("https://hub\\evil.example/api", "not a DNS name"),
        ("https://hub.example.org", "must include the API's path"),
        ("http://127.0.0.1:8000/", "must include the API's path"),
    ]:
        with pytest.raises(SettingsError, match=f"FLIP_HUB_URL: hub URL .*{why}") as err:
            prod_settings(monkeypatch, FLIP_HUB_URL=url)
        assert "QUERY-SECRET" not in str(err.value)


# -- item 6: timeout, retries, backoff -------------------------------------------------------------------------------
def _timeout_refused(monkeypatch, tmp_path, value: str):
    with pytest.raises(
        SettingsError,
        match=r"FLIP_HUB_TIMEOUT: hub timeout must be a number of seconds > 0 and "
        r"<= 300, got ",
    ) as err:
        prod_settings(monkeypatch, FLIP_HUB_TIMEOUT=value)
    assert KEY not in str(err.value)
    with pytest.raises(ValueError, match=r"timeout must be a number of seconds > 0 and <= 300"):
        HubPlatform("https://hub.example.org/api", SecretStr(KEY), tmp_path, timeout=float(value))


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
    with pytest.raises(
        SettingsError,
        match=rf"FLIP_HUB_RETRIES: hub retries must be an integer from 1 to 10 "
        rf"\(attempts in all\), got {value}",
    ):
        prod_settings(monkeypatch, FLIP_HUB_RETRIES=value)
    with pytest.raises(ValueError, match="attempts must be an integer from 1 to 10"):
        HubPlatform("https://hub.example.org/api", SecretStr(KEY), tmp_path, attempts=int(value))
    assert prod_settings(monkeypatch, FLIP_HUB_RETRIES="10").hub_retries == 10


def test_backoff_is_capped(hub):
    """Before: the sleep doubled without a cap (0.5 s * 2**8 = 128 s before a 10th attempt) and there was no
    backoff_delays and no max_sleep. Now each sleep is at most 8 s (max_sleep), measured on an always-failing hub."""
    from flip.platform.http import MAX_SLEEP, backoff_delays

    assert MAX_SLEEP == 8.0
    assert backoff_delays(10, 0.5) == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert max(backoff_delays(10, 8.0)) == 8.0 and backoff_delays(1, 0.5) == []
    hub.replica.faults.fail = 100
    started = time.monotonic()
    with pytest.raises(PlatformError, match=r"hub unreachable after 5 attempts \(HTTP 500\)"):
        platform(hub, attempts=5, backoff=0.2, max_sleep=0.3).report_metrics(
            MODEL_ID, "job-1", 1, "site-1", {"loss": 1.0}
        )
    slept = time.monotonic() - started
    assert 0.2 + 3 * 0.3 <= slept < 2.5  # capped: 0.2, 0.3, 0.3, 0.3; uncapped: 0.2 + 0.4 + 0.8 + 1.6 = 3.0
    assert len(hub.replica.requests()) == 5
    with pytest.raises(ValueError, match=r"max_sleep must be a number of seconds from 0 to 8"):
        platform(hub, max_sleep=60)


def test_request_deadline_bounds_the_total_time(hub):
    """Before: 10 attempts of a slow hub took 10 timeouts plus the sleeps; there was no deadline."""
    hub.replica.faults.slow = 3.0
    started = time.monotonic()
    with pytest.raises(PlatformError, match=r"hub unreachable after [1-4] attempts? .*gave up at the 1 s deadline"):
        platform(hub, timeout=0.4, attempts=10, deadline=1.0).report_status(MODEL_ID, "job-1", RunStatus.INITIATED)
    assert time.monotonic() - started < 1.8


# -- item 7: a status recorded but answered late ---------------------------------------------------------------------
def test_status_recorded_after_timeout_is_sent_again_and_taken(hub):
    """A status the hub recorded but answered after the client's timeout is sent again: FLIP's hub takes a repeated
    status (200), so the retry succeeds. (Issue 14's hub answered 409 to a repeat; FLIP's has no 409.)"""
    hub.replica.faults.late, hub.replica.faults.late_delay = 1, 1.5  # record, then answer after the 0.3 s timeout
    platform(hub, timeout=0.3, attempts=3).report_status(MODEL_ID, "job-1", RunStatus.RESULTS_UPLOADED)
    assert hub.replica.statuses(MODEL_ID) == ["RESULTS_UPLOADED", "RESULTS_UPLOADED"]
    assert len(hub.replica.requests()) == 2


def test_status_recorded_after_timeout_run_ends_results_uploaded(hub):
    """The same at the server's status lifecycle: the run ends in RESULTS_UPLOADED, nothing is recorded for resend."""
    handler = ServerEventHandler(model_id=MODEL_ID)
    handler.platform = platform(hub, timeout=0.3, attempts=3)
    handler.run_id = "job-1"
    hub.replica.faults.late, hub.replica.faults.late_delay = 1, 1.5
    handler.report_status(FLContext(), RunStatus.RESULTS_UPLOADED)
    assert handler.final_status == RunStatus.RESULTS_UPLOADED and handler.reported == [RunStatus.RESULTS_UPLOADED]
    assert hub.replica.statuses(MODEL_ID)[-1] == "RESULTS_UPLOADED" and handler.platform.undelivered() == []


# -- issue 17: the hub down at START_RUN, mid-run and at the final status -----------------------------------------------
class _Engine(FakeEngine):
    """The server's engine with two clients (a real Workspace under the test's folder)."""

    def get_clients(self):
        return [object(), object()]


_ENGINE: list[_Engine] = []


@pytest.fixture(autouse=True)
def _engine(tmp_path):
    (tmp_path / "ws" / "job-1").mkdir(parents=True)
    _ENGINE[:] = [_Engine(tmp_path / "ws", "server")]


def _ctx(site: str | None = None, **props) -> FLContext:
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey

    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _ENGINE[0], private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    ctx.set_prop(FLContextKey.APP_ROOT, str(_ENGINE[0].workspace.get_root_dir()), private=True, sticky=False)
    if site:
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
        ctx.set_peer_context(peer)
    for key, value in props.items():
        ctx.set_prop(key, value, private=True, sticky=False)
    return ctx


def _contribution(handler, site: str, round_num: int, metrics: dict) -> None:
    from nvflare.apis.dxo import DXO, DataKind

    from flip.constants import FlipMeta

    result = DXO(
        DataKind.WEIGHT_DIFF, data={"w": np.zeros(2, np.float32)}, meta={FlipMeta.NUM_SAMPLES: metrics["num_samples"]}
    ).to_shareable()
    result.set_header(FlipMeta.METRICS, metrics)
    handler.handle_event(
        AppEventType.AFTER_CONTRIBUTION_ACCEPT,
        _ctx(
            site,
            **{
                AppConstants.TRAINING_RESULT: result,
                AppConstants.CURRENT_ROUND: round_num,
                AppConstants.AGGREGATION_ACCEPTED: True,
            },
        ),
    )


def _handler(p: HubPlatform) -> ServerEventHandler:
    handler = ServerEventHandler(model_id=MODEL_ID, flip=p)
    handler.platform, handler.run_id, handler.job_id = p, "job-1", "job-1"
    return handler


def test_a_round_reaches_the_hub_as_flips_events_metrics_and_failures(hub, tmp_path, monkeypatch):
    """One round at the server's handler: ROUND_STARTED, CLIENT_RESULT_RECEIVED per site, each site's metrics one
    label per request, ROUND_AGGREGATED with returned/expected, a site's failure as a failed log; in order."""
    monkeypatch.chdir(tmp_path)
    handler = _handler(platform(hub))
    handler.handle_event(
        AppEventType.ROUND_STARTED, _ctx(**{AppConstants.CURRENT_ROUND: 0, AppConstants.NUM_ROUNDS: 2})
    )
    _contribution(handler, "site-1", 0, {"num_samples": 10, "loss": 0.7})
    handler.site_errors.clear()
    from nvflare.apis.fl_constant import FLContextKey, ReturnCode
    from nvflare.apis.shareable import make_reply

    from flip.constants import FlipMeta

    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed.set_header(FlipMeta.ERROR_REASON, "train failed: trainer.py raised KeyError")
    handler.handle_event(
        EventType.BEFORE_PROCESS_SUBMISSION,
        _ctx("site-2", **{FLContextKey.TASK_RESULT: failed, FLContextKey.TASK_NAME: "train"}),
    )
    handler.handle_event(AppEventType.ROUND_DONE, _ctx(**{AppConstants.CURRENT_ROUND: 0}))
    assert hub.replica.statuses(MODEL_ID) == ["RUNNING"]  # the first round starts training
    logs = [r for r in hub.replica.logs(MODEL_ID) if r["event_type"] or r["fl_client_name"]]  # not the hub's own
    assert [(r["event_type"], r["fl_client_name"], r["global_round"]) for r in logs[:2]] == [
        ("ROUND_STARTED", None, 1),
        ("CLIENT_RESULT_RECEIVED", "site-1", 1),
    ]
    assert logs[0]["details"] == {"total_rounds": 2}
    assert (logs[2]["fl_client_name"], logs[2]["log"], logs[2]["success"]) == (
        "site-2",
        "train failed: trainer.py raised KeyError",
        0,
    )
    assert (logs[3]["event_type"], logs[3]["details"]) == ("ROUND_AGGREGATED", {"returned": 1, "expected": 2})
    assert [(m["fl_client_name"], m["global_round"], m["label"]) for m in hub.replica.metrics(MODEL_ID)] == [
        ("site-1", 1, "num_samples"),
        ("site-1", 1, "loss"),
    ]


def test_hub_down_at_start_run_is_named_and_the_run_goes_on(tmp_path, caplog):
    """The hub unreachable at START_RUN: INITIATED is not delivered, the log names the cause; no fatal error."""
    p = HubPlatform(
        f"http://127.0.0.1:{closed_port()}/api", SecretStr(KEY), tmp_path, timeout=0.5, attempts=2, backoff=0.01
    )
    handler = _handler(p)
    handler.report_status(_ctx(), RunStatus.INITIATED)
    assert (
        "could not report status INITIATED: hub unreachable after 2 attempts (ConnectionRefusedError) for PUT <path>"
    ) in caplog.text  # the short reason sent on: paths replaced
    assert handler.fatal_error is False and handler.final_status is None and p.undelivered() == []


def test_hub_down_mid_run_loses_no_metrics(hub, tmp_path, monkeypatch):
    """The hub failing mid-run: the server's record of the round (metrics.json) is complete all the same, and the
    next reports are held off instead of stalling every event for the whole retry budget."""
    monkeypatch.chdir(tmp_path)
    handler = _handler(platform(hub, attempts=2))
    hub.replica.faults.fail = 100
    handler.handle_event(
        AppEventType.ROUND_STARTED, _ctx(**{AppConstants.CURRENT_ROUND: 0, AppConstants.NUM_ROUNDS: 1})
    )
    started = time.monotonic()
    _contribution(handler, "site-1", 0, {"num_samples": 10, "loss": 0.7})
    _contribution(handler, "site-2", 0, {"num_samples": 12, "loss": 0.6})
    assert time.monotonic() - started < 1.0  # held off: no request, no retry sleeps
    assert len(hub.replica.requests()) == 2  # the ROUND_STARTED attempts only
    assert {site: m["loss"] for site, m in handler.metrics.rounds[0]["sites"].items()} == {"site-1": 0.7, "site-2": 0.6}


def test_hub_down_at_the_final_status_records_it_for_a_resend(hub):
    """Before: a final status the hub did not take became ERROR on the hub (if it took that) or was lost; now the
    status stands on the server, recorded for `flip status --resend`, and is resent once the hub is back."""
    p = platform(hub, attempts=2)
    handler = _handler(p)
    hub.replica.faults.fail = 100
    handler.report_status(FLContext(), RunStatus.RESULTS_UPLOADED)
    assert handler.final_status == RunStatus.RESULTS_UPLOADED and handler.reported == [RunStatus.RESULTS_UPLOADED]
    assert [(r["status"], r["run_id"]) for r in p.undelivered(MODEL_ID)] == [("RESULTS_UPLOADED", "job-1")]
    assert hub.replica.statuses(MODEL_ID) == []
    hub.replica.faults.fail = 0
    assert [r["status"] for r in p.resend(MODEL_ID)] == ["RESULTS_UPLOADED"]
    assert hub.replica.statuses(MODEL_ID) == ["RESULTS_UPLOADED"] and p.undelivered(MODEL_ID) == []


def test_a_failed_run_sends_its_reason_and_records_both_if_the_hub_is_down(hub):
    p = platform(hub, attempts=1)
    hub.replica.faults.fail = 100
    handler = _handler(p)
    handler.report_status(FLContext(), RunStatus.ERROR, "site site-1: trainer.py raised KeyError")
    (record,) = p.undelivered(MODEL_ID)
    assert (record["status"], record["reason"]) == ("ERROR", "site site-1: trainer.py raised KeyError")
    hub.replica.faults.fail = 0
    p.resend(MODEL_ID)
    assert hub.replica.statuses(MODEL_ID) == ["ERROR"]
    assert hub.replica.logs(MODEL_ID)[0]["log"] == "run job-1: site site-1: trainer.py raised KeyError"


# -- issue 17: FLIP's variables and ours ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flip_name, flip_value, ours, our_value, shown",
    [
        (
            "FLIP_API_INTERNAL_URL",
            "https://hub-a.example.org/api",
            "FLIP_HUB_URL",
            "https://hub-b.example.org/api",
            True,
        ),
        ("INTERNAL_SERVICE_KEY", "key-one-SECRET", "FLIP_HUB_API_KEY", "key-two-SECRET", False),
        ("UPLOADED_FEDERATED_DATA_BUCKET", "s3://bucket-a", "FLIP_MODELS_BUCKET", "bucket-b", True),
    ],
)
def test_flips_variable_and_ours_disagreeing_is_named(monkeypatch, flip_name, flip_value, ours, our_value, shown):
    """Before: FLIP's variable was read beside ours and ignored (the hub URL, the key, the bucket came from ours)."""
    for var in ("FLIP_HUB_URL", "FLIP_HUB_API_KEY", "FLIP_MODELS_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(flip_name, flip_value)
    monkeypatch.setenv(ours, our_value)
    with pytest.raises(
        SettingsError,
        match=rf"{flip_name} and {ours} name the same setting and are both set, "
        r"differently",
    ) as err:
        load_settings()
    assert (flip_value in str(err.value)) is shown and (our_value in str(err.value)) is shown


def test_a_key_file_and_a_key_variable_together_are_refused(monkeypatch, tmp_path):
    with pytest.raises(SettingsError, match="INTERNAL_SERVICE_KEY_FILE and a key variable .* are both set") as err:
        prod_settings(monkeypatch, INTERNAL_SERVICE_KEY_FILE=str(tmp_path / "k"))
    assert KEY not in str(err.value)


@pytest.mark.parametrize("value", ["s3://bucket/prefix", "bucket", "s3://", "s3://Bad_Bucket"])
def test_a_results_bucket_that_is_not_s3_bucket_is_refused(monkeypatch, value):
    """Before: any s3:// URL was accepted and flip uploaded elsewhere (FLIP_MODELS_BUCKET) than the hub lists."""
    with pytest.raises(SettingsError, match="UPLOADED_FEDERATED_DATA_BUCKET: "):
        prod_settings(monkeypatch, UPLOADED_FEDERATED_DATA_BUCKET=value)


@pytest.mark.parametrize("header", ["X-Key\r\nX-Injected: 1", "X Key", "", "X-Key:"])
def test_a_key_header_that_is_no_header_name_is_refused(monkeypatch, tmp_path, header):
    with pytest.raises(SettingsError, match="header name must be an HTTP header name"):
        prod_settings(monkeypatch, INTERNAL_SERVICE_KEY_HEADER=header)
    with pytest.raises(SettingsError, match="INTERNAL_SERVICE_KEY_HEADER must be an HTTP header name"):
        HubPlatform("https://hub.example.org/api", SecretStr(KEY), tmp_path, key_header=header)
