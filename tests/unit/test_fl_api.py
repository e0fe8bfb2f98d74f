"""The FL API service's rules without a running service: FLIP's job statuses, the sites' statuses as the hub reads
them, the trust -> site mapping, the key's rules, the bundle's layout and its fetch (a real S3 server), the admin
session's one reconnection.

Everything that talks to an FL server is checked against a real provisioned network in tests/e2e/test_fl_api.py."""

from __future__ import annotations

import http.server
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from nvflare.fuel.flare_api.api_spec import InternalError, NoConnection, SessionClosed

from flip.api.bundle import check_urls, fetch_bundle, layout
from flip.api.flare import NATIVE_STATUSES, OFFLINE, Flare, JobStatus, client_statuses, job_list, job_status
from flip.api.schemas import UploadAppRequest
from flip.api.settings import ServiceConfig, check_trust_sites, load_api_settings, read_key, service_config
from flip.api.staging import check_older_fields, map_trusts, trust_names
from flip.errors import ApiError, FlareError, SettingsError
from tests.conftest import environ, presigned_link

KEY = "k" * 24


@pytest.mark.unit
@pytest.mark.parametrize(
    "native, expected",
    [
        ("SUBMITTED", "PENDING"),
        ("APPROVED", "PENDING"),
        ("DISPATCHED", "PENDING"),
        ("RUNNING", "RUNNING"),
        ("FINISHED:COMPLETED", "FINISHED"),
        ("FINISHED:ABORTED", "STOPPED"),
        ("FINISHED:EXECUTION_EXCEPTION", "FAILED"),
        ("FINISHED:ABNORMAL", "FAILED"),
        ("FINISHED:CAN_NOT_SCHEDULE", "FAILED"),
        ("FINISHED:FAILED_TO_RUN", "FAILED"),
        ("FINISHED:ABANDONED", "FAILED"),
        (" running ", "RUNNING"),
        ("SOMETHING_NEW", "FAILED"),
        (None, "FAILED"),
    ],
)
def test_nvflare_statuses_become_the_hubs_five(native, expected):
    assert job_status(native) == expected


@pytest.mark.unit
def test_every_nvflare_run_status_is_mapped():
    from nvflare.apis.job_def import RunStatus

    assert {s.value for s in RunStatus} == set(NATIVE_STATUSES)
    assert set(NATIVE_STATUSES.values()) == set(JobStatus)


@pytest.mark.unit
def test_list_jobs_items_have_exactly_the_hubs_fields():
    jobs = [
        {"job_id": "a", "job_name": "m", "status": "RUNNING", "submit_time": "t"},
        {"job_id": "b", "status": "FINISHED:COMPLETED"},
        {"status": "RUNNING"},
        "junk",
        {"job_id": ""},
    ]
    assert job_list(jobs) == [{"job_id": "a", "status": "RUNNING"}, {"job_id": "b", "status": "FINISHED"}]
    assert job_list(None) == []


@pytest.mark.unit
def test_a_site_without_an_answer_is_offline_for_the_hub():
    clients = [("site-a", 1.5), ("site-b", 2.5), ("site-c", None)]
    rows = [
        {"client_name": "site-a", "status": "RUNNING", "job_id": "j1"},
        {"client_name": "site-a", "status": "no_jobs"},  # a second row of a site: the first one counts
        {"client_name": "site-b", "status": "no_jobs"},
        {"client_name": "elsewhere", "status": "no_jobs"},
    ]
    assert client_statuses(clients, rows) == [
        {"name": "site-a", "last_connect_time": 1.5, "status": "RUNNING"},
        {"name": "site-b", "last_connect_time": 2.5, "status": "no_jobs"},
        {"name": "site-c", "last_connect_time": None, "status": "no_reply"},
    ]
    assert "no_reply" in OFFLINE and "DISCONNECTED" in OFFLINE
    assert [c["status"] for c in client_statuses(clients, None)] == ["no_reply"] * 3


@pytest.mark.unit
def test_trusts_map_to_sites_by_name_or_by_the_mapping():
    mapping = {"Trust_1": "hospital-a"}
    assert map_trusts(["Trust_1", "hospital-b"], mapping, ["hospital-a", "hospital-b"]) == ["hospital-a", "hospital-b"]
    assert trust_names(mapping) == {"hospital-a": "Trust_1"}
    with pytest.raises(
        ApiError,
        match=r"'Trust_2' not in the network: the sites connected to the FL server are "
        r"Trust_1 \(site hospital-a\), hospital-b",
    ) as caught:
        map_trusts(["Trust_1", "Trust_2"], mapping, ["hospital-b", "hospital-a"])
    assert caught.value.status == 400
    with pytest.raises(ApiError, match="name a site twice"):
        map_trusts(["Trust_1", "hospital-a"], mapping, ["hospital-a"])


@pytest.mark.unit
@pytest.mark.parametrize(
    "value, error",
    [
        ('{"Trust_1": "hospital-a", "Trust_2": "hospital-a"}', "several trusts to site"),
        ('{"Trust_1": "../x"}', "site name '../x' is invalid"),
        ('["hospital-a"]', "JSON object of trust names"),
        ("{not json", "must be a JSON object"),
        ('{"Trust\\n1": "hospital-a"}', "control characters"),
    ],
)
def test_a_bad_trust_mapping_is_refused_naming_it(value, error):
    with pytest.raises(ValueError, match=error):
        check_trust_sites(value)
    with environ(FLIP_API_TRUST_SITES=value), pytest.raises(SettingsError, match="FLIP_API_TRUST_SITES"):
        load_api_settings()


@pytest.mark.unit
def test_the_settings_read_flip_api_variables(tmp_path):
    with environ(
        FLIP_API_TRUST_SITES='{"Trust_1": "hospital-a"}',
        FLIP_API_BUNDLE_BUCKET="flip-bundles",
        FLIP_API_KEY_HEADER="X-Other-Key",
        FLIP_API_KEY=KEY,
        FLIP_API_BUNDLE_ROOT=str(tmp_path),
    ):
        config = service_config(load_api_settings(), "0.0.0.0")
    assert config.trust_sites == {"Trust_1": "hospital-a"} and config.bundle_bucket == "flip-bundles"
    assert config.key == KEY and config.key_header == "X-Other-Key" and config.bundle_root == tmp_path.resolve()
    assert KEY not in repr(config)


@pytest.mark.unit
def test_a_key_from_a_private_file(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    os.chmod(path, 0o600)
    assert read_key(load_api_settings(key_file=path)) == KEY
    os.chmod(path, 0o640)
    with pytest.raises(SettingsError, match=r"is open to other users \(mode 0640\).*chmod 600"):
        read_key(load_api_settings(key_file=path))


@pytest.mark.unit
def test_no_key_is_served_only_on_loopback_with_the_flag():
    settings = load_api_settings()
    with pytest.raises(SettingsError, match="the FL API needs a key: set FLIP_API_KEY_FILE"):
        service_config(settings, "127.0.0.1")
    with pytest.raises(SettingsError, match="on a loopback address only .* not on '0.0.0.0'"):
        service_config(settings, "0.0.0.0", insecure_loopback=True)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert service_config(settings, host, insecure_loopback=True).key is None


@pytest.mark.unit
def test_older_hub_fields_flip_cannot_honour_are_refused_not_ignored():
    base = {"project_id": "p", "cohort_query": "q", "trusts": ["t"], "bundle_urls": ["s3://b/k"]}
    check_older_fields(
        UploadAppRequest(
            **base,
            aggregator="AccumulateWeightedAggregator",
            aggregation_weights={},
            ignore_result_error=False,
            global_rounds=2,
            local_rounds=3,
        )
    )
    for extra, error in (
        ({"ignore_result_error": True}, "ignore_result_error true is not supported"),
        ({"aggregator": "Krum"}, "aggregator must be one of"),
        ({"aggregation_weights": {"site-1": 0.5}}, "aggregation_weights are not supported"),
    ):
        with pytest.raises(ApiError, match=error):
            check_older_fields(UploadAppRequest(**base, **extra))


def _config(tmp_path: Path, **kwargs) -> ServiceConfig:
    return ServiceConfig(key=KEY, bundle_bucket="flip-bundles", bundle_root=tmp_path.resolve(), **kwargs)


@pytest.mark.unit
def test_paths_are_relative_to_the_bundles_common_folder(tmp_path):
    config = _config(tmp_path)
    hub = check_urls(
        [
            "s3://flip-bundles/m1/app/custom/trainer.py",
            "s3://flip-bundles/m1/app/config/c.json",
            "s3://flip-bundles/m1/meta.json",
        ],
        config,
    )
    assert [str(rel) for _, rel in layout(hub)] == ["app/custom/trainer.py", "app/config/c.json", "meta.json"]
    flat = check_urls(
        ["s3://flip-bundles/m1/app/custom/trainer.py", "s3://flip-bundles/m1/app/custom/models.py"], config
    )
    assert [str(rel) for _, rel in layout(flat)] == ["trainer.py", "models.py"]


@pytest.mark.unit
def test_a_file_folder_url_brings_every_file_under_it(tmp_path):
    app = tmp_path / "apps" / "my_app"
    (app / "sub").mkdir(parents=True)
    for name in ("trainer.py", "config.json", "sub/data.csv", ".hidden"):
        (app / name).write_text(name)
    files = check_urls([f"file://{app}"], _config(tmp_path))
    assert sorted(str(rel) for _, rel in layout(files)) == ["config.json", "sub/data.csv", "trainer.py"]
    dest = tmp_path / "out"
    dest.mkdir()
    assert fetch_bundle(files, dest, _config(tmp_path)) == dest
    assert (dest / "sub" / "data.csv").read_text() == "sub/data.csv"


@pytest.mark.unit
def test_a_bundle_larger_than_allowed_is_refused_before_it_is_copied(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "big.bin").write_bytes(b"x" * 2048)
    config = _config(tmp_path, max_bundle_bytes=1024)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ApiError, match="larger than 0 MiB"):
        fetch_bundle(check_urls([f"file://{app}"], config), dest, config)
    assert list(dest.iterdir()) == []
    with pytest.raises(ApiError, match="more than 1 files"):
        check_urls([f"file://{app}/big.bin", f"file://{app}/big.bin"], _config(tmp_path, max_bundle_files=1))


@pytest.mark.s3
def test_a_hub_bundle_in_s3_gives_its_app_custom_folder_and_checkpoints(tmp_path, weed):
    client = weed._client()
    client.create_bucket(Bucket="flip-bundles-unit")
    objects = {
        "m1/app/custom/trainer.py": b"T",
        "m1/app/custom/config.json": b"{}",
        "m1/meta.json": b"{}",
        "m1/app/config/config_fed_client.json": b"{}",
        "m1/server_checkpoints/model.pt": b"W",
    }
    for key, body in objects.items():
        client.put_object(Bucket="flip-bundles-unit", Key=key, Body=body)
    config = ServiceConfig(key=KEY, bundle_bucket="flip-bundles-unit")
    dest = tmp_path / "bundle"
    dest.mkdir()
    with environ(**weed.env):
        app = fetch_bundle(check_urls([f"s3://flip-bundles-unit/{k}" for k in objects], config), dest, config)
    assert app == dest / "app" / "custom"
    assert {p.name: p.read_bytes() for p in app.iterdir()} == {
        "trainer.py": b"T",
        "config.json": b"{}",
        "model.pt": b"W",
    }
    missing = check_urls(["s3://flip-bundles-unit/m1/absent.py"], config)
    other = tmp_path / "other"
    other.mkdir()
    with environ(**weed.env), pytest.raises(ApiError, match="absent.py: no such object") as caught:
        fetch_bundle(missing, other, config)
    assert caught.value.status == 400


def _presigned_bundle(weed, bucket: str, objects: dict[str, bytes]) -> list[str]:
    """The bundle as FLIP's hub sends it: one pre-signed GET link (SigV4) per object."""
    client = weed._client()
    client.create_bucket(Bucket=bucket)
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return [presigned_link(weed, bucket, key) for key in objects]


@pytest.mark.s3
def test_the_hubs_presigned_links_are_fetched_from_a_listed_host_without_credentials(tmp_path, weed):
    """FLIP's hub sends pre-signed https links: fetched as they are from a host of FLIP_API_BUNDLE_HOSTS (the S3
    server's own signature authorises the read: no credential of the service is sent or needed)."""
    from flip.api.settings import BundleHost

    objects = {
        "m2/app/custom/trainer.py": b"T",
        "m2/app/custom/config.json": b"{}",
        "m2/meta.json": b"{}",
        "m2/server_checkpoints/model.pt": b"W" * 3000,
    }
    links = _presigned_bundle(weed, "flip-bundles-links", objects)
    assert all("X-Amz-Signature=" in link for link in links)
    config = ServiceConfig(key=KEY, bundle_hosts=frozenset({BundleHost("127.0.0.1", weed.s3_port)}))
    dest = tmp_path / "bundle"
    dest.mkdir()
    no_credentials = {k: None for k in os.environ if k.startswith("AWS_")}
    with environ(**no_credentials):
        app = fetch_bundle(check_urls(links, config), dest, config)
    assert app == dest / "app" / "custom"
    assert {p.name: p.read_bytes() for p in app.iterdir()} == {
        "trainer.py": b"T",
        "config.json": b"{}",
        "model.pt": b"W" * 3000,
    }

    def refused(urls, match, status=400, **bounds):
        bounded = ServiceConfig(key=KEY, bundle_hosts=config.bundle_hosts, **bounds)
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        with pytest.raises(ApiError, match=match) as caught:
            fetch_bundle(check_urls(urls, bounded), out, bounded)
        assert (
            caught.value.status == status
            and "Amz" not in str(caught.value)
            and weed.access_key not in str(caught.value)
        )

    signature = links[0].split("X-Amz-Signature=")[1][:64]
    tampered = links[0].replace(signature, "0" * len(signature))
    refused([tampered], r"trainer.py\?\.\.\.: the host refused its signature .* \(HTTP 403\)")
    absent = presigned_link(weed, "flip-bundles-links", "m2/no.py")
    refused([absent], r"m2/no.py\?\.\.\.: no such object \(HTTP 404\)")
    refused(links, "the bundle is larger than 0 MiB", max_bundle_bytes=2048)  # the checkpoint is 3000 bytes
    with pytest.raises(ApiError, match=r"http://127.0.0.1:\d+ is not a bundle host; allowed: https:// on example.org"):
        check_urls(links[:1], ServiceConfig(key=KEY, bundle_hosts=frozenset({BundleHost("example.org")})))
    with pytest.raises(ApiError, match="it carries credentials"):
        check_urls([links[0].replace("http://", "http://user:pw@")], config)


@contextmanager
def _bundle_host(handler):
    """Serve ``handler`` (an http.server request handler class) on 127.0.0.1; yield a ServiceConfig listing it as the
    only bundle host, and its base URL."""
    from flip.api.settings import BundleHost

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        yield (
            ServiceConfig(key=KEY, bundle_hosts=frozenset({BundleHost("127.0.0.1", port)})),
            f"http://127.0.0.1:{port}",
        )
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.unit
def test_a_bundle_host_that_redirects_is_not_followed(tmp_path):
    """A 3xx from a bundle host is a 502 naming where it pointed; the link is never sent on."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        seen: list = []

        def do_GET(self):  # noqa: N802 - http.server's name
            Redirect.seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "http://elsewhere.example/steal")
            self.end_headers()

        def log_message(self, *args):
            pass

    with _bundle_host(Redirect) as (config, base):
        dest = tmp_path / "out"
        dest.mkdir()
        url = f"{base}/b/m/app/custom/trainer.py?X-Amz-Signature=abc"
        with pytest.raises(ApiError, match=r"redirect \(HTTP 302\) to 'elsewhere.example'") as caught:
            fetch_bundle(check_urls([url], config), dest, config)
        assert caught.value.status == 502 and len(Redirect.seen) == 1


@pytest.mark.unit
def test_a_link_cut_off_mid_file_is_fetched_again_from_the_start(tmp_path):
    """The download streams to disk; a connection dropped mid-file is retried and the file holds the whole answer
    once, not the cut-off part followed by it."""

    class Flaky(http.server.BaseHTTPRequestHandler):
        calls = 0

        def do_GET(self):  # noqa: N802 - http.server's name
            Flaky.calls += 1
            body = b"0123456789" * 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:4000] if Flaky.calls == 1 else body)  # the first answer is cut off
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *args):
            pass

    with _bundle_host(Flaky) as (config, base):
        dest = tmp_path / "out"
        dest.mkdir()
        fetch_bundle(check_urls([f"{base}/b/m/model.pt?X-Amz-Signature=abc"], config), dest, config)
        assert Flaky.calls == 2 and (dest / "model.pt").read_bytes() == b"0123456789" * 1000


@pytest.mark.unit
@pytest.mark.parametrize(
    "value, hosts",
    [
        ("s3.eu-west-2.amazonaws.com", {("s3.eu-west-2.amazonaws.com", None, False)}),
        ("a.example.org:8443, http://minio:9000", {("a.example.org", 8443, False), ("minio", 9000, True)}),
        ("", set()),
    ],
)
def test_bundle_hosts_are_read_from_the_setting(value, hosts):
    with environ(FLIP_API_BUNDLE_HOSTS=value):
        read = load_api_settings().bundle_hosts
    assert {(h.host, h.port, h.http) for h in read} == hosts


@pytest.mark.unit
@pytest.mark.parametrize(
    "value", ["ftp://x", "https://a.org/path", "user@a.org", "a.org:0", "a b", "https://a.org?x=1"]
)
def test_a_bad_bundle_host_is_refused_naming_it(value):
    with environ(FLIP_API_BUNDLE_HOSTS=value), pytest.raises(SettingsError, match="FLIP_API_BUNDLE_HOSTS") as caught:
        load_api_settings()
    assert "host" in str(caught.value)


@pytest.mark.unit
def test_plain_http_only_where_the_entry_or_loopback_allows_it():
    from flip.api.settings import BundleHost

    aws, minio = BundleHost("s3.example.org"), BundleHost("minio", 9000, http=True)
    assert aws.allows("https", "S3.example.org", None) and aws.allows("https", "s3.example.org", 443)
    assert not aws.allows("http", "s3.example.org", None) and not aws.allows("https", "s3.example.org", 8443)
    assert minio.allows("http", "minio", 9000) and not minio.allows("http", "minio", 80)
    assert BundleHost("127.0.0.1", 8333).allows("http", "127.0.0.1", 8333)
    assert BundleHost("localhost").allows("http", "localhost", None) and BundleHost("localhost").allows(
        "https", "localhost", 443
    )
    assert not aws.allows("https", "evil.org", None)


class _Session:
    """A stand-in for NVFlare's admin Session (not flip's code): counts calls, fails as told."""

    def __init__(self, log: list, fail: list):
        self.log, self.fail, self.closed = log, fail, False
        self.upload_dir = "/nonexistent"

    def list_jobs(self, **kwargs):
        self.log.append("list_jobs")
        if self.fail:
            raise self.fail.pop(0)
        return [{"job_id": "j", "status": "RUNNING"}]

    def close(self):
        self.closed = True


def _flare(fail: list) -> tuple[Flare, list, list]:
    log, sessions = [], []

    def connect(username, admin_dir, timeout):
        sessions.append(_Session(log, fail))
        return sessions[-1]

    return Flare("/nonexistent", "admin@flip.org", connect=connect), log, sessions


@pytest.mark.unit
def test_a_lost_connection_reconnects_once_and_repeats_the_call():
    flare, log, sessions = _flare([SessionClosed("the session is closed on server")])
    assert flare.call("list_jobs", lambda s: s.list_jobs()) == [{"job_id": "j", "status": "RUNNING"}]
    assert log == ["list_jobs", "list_jobs"] and len(sessions) == 2 and sessions[0].closed


@pytest.mark.unit
def test_a_second_lost_connection_is_a_502_with_the_cause():
    flare, log, sessions = _flare([NoConnection("cannot connect to server"), NoConnection("still down")])
    with pytest.raises(
        FlareError, match="list_jobs: the connection to the FL server was lost: NoConnection: still down"
    ) as caught:
        flare.call("list_jobs", lambda s: s.list_jobs())
    assert caught.value.status == 502 and len(log) == 2


@pytest.mark.unit
def test_other_flare_errors_are_502_without_a_retry():
    flare, log, _ = _flare([InternalError("server internal error: disk full\nTraceback (most recent call last)")])
    with pytest.raises(FlareError) as caught:
        flare.call("list_jobs", lambda s: s.list_jobs())
    assert str(caught.value) == "list_jobs: InternalError: server internal error: disk full"
    assert caught.value.status == 502 and log == ["list_jobs"]


@pytest.mark.unit
def test_an_unreachable_kit_is_a_502_naming_it(tmp_path):
    with pytest.raises(
        FlareError, match=f"cannot reach the FL server with the admin kit {tmp_path.name} as x@y"
    ) as caught:
        Flare(tmp_path, "x@y", connect_timeout=1).connect()
    assert caught.value.status == 502


@pytest.mark.unit
def test_the_settings_never_show_the_key():
    with environ(FLIP_API_KEY=KEY, FLIP_API_MAX_BUNDLE_MB="0"), pytest.raises(SettingsError) as caught:
        load_api_settings()
    assert "FLIP_API_MAX_BUNDLE_MB" in str(caught.value) and KEY not in str(caught.value)
    assert KEY not in repr(load_api_settings(key=KEY)) and KEY not in json.dumps(str(load_api_settings(key=KEY)))
