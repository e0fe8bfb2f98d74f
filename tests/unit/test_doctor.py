"""``flip doctor --kit DIR`` (issue 22 item 5): one line per check, failures first, exit 1 on any failure: the kit's
files, key privacy and match, issuer and expiry; the connection to the server (real mutual TLS on 127.0.0.1);
the environment file; the S3 bucket (real weed) and the hub (a real local HTTP server); a site's images and that it
holds no server secret. Before: there was no flip doctor."""

from __future__ import annotations

import shutil

import pytest

from flip.cli import main as flip_cli
from flip.demo.data import write_cohorts
from flip.ops.doctor import FAIL, OK, WARN, diagnose
from flip.storage.weed import free_ports
from tests.kits import TlsServer, reissue
from tests.replicas.fixtures import HUB_KEY, running_hub


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits")
    fed, admin = free_ports(2)
    assert (
        flip_cli(
            [
                "provision",
                "--sites",
                "hospital-a,hospital-b",
                "--server",
                "localhost",
                "--fed-port",
                str(fed),
                "--admin-port",
                str(admin),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out, out / "workspace" / "flip" / "prod_00", fed, admin


@pytest.fixture
def env(monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    return monkeypatch


def _lines(checks, level):
    return [str(c) for c in checks if c.level == level]


def _copy(prod, kit, tmp_path):
    return shutil.copytree(prod / kit, tmp_path / kit)


@pytest.mark.unit
def test_a_site_with_images_and_a_running_server_is_well(project, env, tmp_path):
    _, prod, fed, _ = project
    write_cohorts(tmp_path / "flip", ["hospital-a"])
    with TlsServer(prod / "localhost", port=fed) as server:
        checks = diagnose(prod / "hospital-a")
    assert _lines(checks, FAIL) == [] and _lines(checks, WARN) == [], checks
    assert [c.what for c in checks] == ["kit", "private key", "expiry", "expiry", "connection", "settings", "images"]
    assert server.accepted == ["hospital-a"]


@pytest.mark.unit
def test_no_server_and_no_images_are_one_line_each_failures_first(project, env, capsys):
    _, prod, fed, _ = project
    assert flip_cli(["doctor", "--kit", str(prod / "hospital-a")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"FAIL connection: cannot reach localhost:{fed} (ConnectionRefusedError)")
    assert out[1].startswith("FAIL images: no images in ")
    assert all(line.startswith("ok ") for line in out[2:])


@pytest.mark.unit
def test_a_key_others_can_read_fails(project, env, tmp_path):
    kit = _copy(project[1], "hospital-a", tmp_path)
    (kit / "startup" / "client.key").chmod(0o644)
    (failed,) = [c for c in diagnose(kit) if c.what == "private key"]
    assert failed.level == FAIL and "open to other users (mode 0644): chmod 600" in failed.detail


@pytest.mark.unit
def test_a_startup_folder_mixing_two_kits_fails(project, env, tmp_path):
    kit = _copy(project[1], "hospital-a", tmp_path)
    shutil.copy(project[1] / "hospital-b" / "startup" / "client.key", kit / "startup" / "client.key")
    assert any("client.key is not the key of client.crt" in s for s in _lines(diagnose(kit), FAIL))


@pytest.mark.unit
def test_a_certificate_of_another_root_fails(project, env, tmp_path):
    other = tmp_path / "other"
    assert flip_cli(["provision", "--sites", "hospital-a", "--out", str(other)]) == 0
    kit = _copy(project[1], "hospital-a", tmp_path)
    shutil.copy(
        other / "workspace" / "flip" / "prod_00" / "hospital-a" / "startup" / "rootCA.pem",
        kit / "startup" / "rootCA.pem",
    )
    assert any("client.crt is not signed by the kit's rootCA.pem" in s for s in _lines(diagnose(kit), FAIL))


@pytest.mark.unit
def test_a_certificate_expiring_soon_warns(project, env, tmp_path):
    out, prod, _, _ = project
    kit = _copy(prod, "hospital-a", tmp_path)
    reissue(out / "workspace" / "flip" / "state", kit, 20)
    (warned,) = _lines(diagnose(kit), WARN)
    assert "hospital-a expires" in warned and "WARNING, under 60 days: run flip provision --renew" in warned


@pytest.mark.unit
def test_the_env_file_must_be_private_and_is_applied(project, env, tmp_path):
    env_file = tmp_path / "flip-hospital-a.env"
    env_file.write_text("# comment\nFLIP_ENV=prod\nFLIP_LOCAL_DIR='/nowhere'\nAWS_SECRET_ACCESS_KEY=\"s3cr3t\"\n")
    env_file.chmod(0o644)
    checks = diagnose(project[1] / "hospital-a", env_file=env_file)
    assert f"FAIL env file: {env_file} is open to other users (mode 0644): chmod 600 {env_file}" in _lines(checks, FAIL)
    assert "ok   settings: FLIP_ENV=prod" in _lines(checks, OK)
    assert any("/nowhere/cohorts/hospital-a" in s for s in _lines(checks, FAIL))
    assert _lines(checks, WARN) == [
        "WARN secrets: this site's environment holds AWS_SECRET_ACCESS_KEY: only the server needs them"
    ]
    assert all("s3cr3t" not in str(c) for c in checks)


@pytest.mark.unit
def test_a_server_on_the_prod_platform_needs_its_hub_settings(project, env):
    env.setenv("FLIP_ENV", "prod")
    env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens: S3 fails fast
    checks = diagnose(project[1] / "localhost")
    assert "FAIL hub: FLIP_ENV=prod needs FLIP_HUB_URL and FLIP_HUB_API_KEY in the server's environment" in _lines(
        checks, FAIL
    )
    assert any(s.startswith("FAIL S3: models bucket 'flip-models': ") for s in _lines(checks, FAIL))


@pytest.mark.http
def test_the_hub_is_reached_without_sending_the_key(project, env, tmp_path):
    with running_hub(tmp_path / "hub") as hub:
        env.setenv("FLIP_ENV", "prod")
        env.setenv("FLIP_HUB_URL", hub.url)
        env.setenv("FLIP_HUB_API_KEY", HUB_KEY)
        (checked,) = [c for c in diagnose(project[1] / "localhost") if c.what == "hub"]
        received = hub.replica.requests()
    assert checked.level == OK and "no request sent, the key stays here" in checked.detail
    assert received == []


@pytest.mark.s3
def test_the_server_reaches_its_bucket_with_its_credentials(project, env, weed):
    _, prod, fed, admin = project
    for key, value in weed.env.items():
        env.setenv(key, value)
    with TlsServer(prod / "localhost", port=fed), TlsServer(prod / "localhost", port=admin):
        checks = diagnose(prod / "localhost")
    assert _lines(checks, FAIL) == [], checks
    assert f"ok   S3: models bucket 'flip-models' at {weed.endpoint} answers with these credentials" in _lines(
        checks, OK
    )
    assert len([c for c in checks if c.what == "connection"]) == 2  # the fed and the admin port
    env.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    (failed,) = [c for c in diagnose(prod / "localhost") if c.what == "S3"]
    assert failed.level == FAIL and "access denied, check the S3 credentials" in failed.detail
