"""TLS names (issue 22 item 3): ``flip provision --server NAME --server-name HOST --server-ip IP`` puts every name and
IP in the server certificate's subject alternative names; bad values are refused naming them. ``flip doctor``'s
connection check says when the name a kit dials is not in the certificate (NVFlare 2.9 connects anyway: it checks
the common name; a proxy or another TLS client may not).

Before: the SAN held only the --server name; there was no option for an IP or another name."""

from __future__ import annotations

import json
import shutil

import pytest

from flip.cli import main as flip_cli
from flip.ops.certs import kit_cert
from flip.ops.doctor import OK, WARN, read_kit, tls_probe
from flip.provisioning import project_config
from tests.kits import TlsServer

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    out = tmp_path_factory.mktemp("named")
    assert (
        flip_cli(
            [
                "provision",
                "--sites",
                "hospital-a",
                "--server",
                "localhost",
                "--server-name",
                "fl.example.org",
                "--server-ip",
                "127.0.0.1",
                "--server-ip",
                "203.0.113.7",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out / "workspace" / "flip" / "prod_00"


@pytest.fixture(scope="module")
def unnamed(tmp_path_factory):
    out = tmp_path_factory.mktemp("unnamed")
    assert flip_cli(["provision", "--sites", "hospital-a", "--server", "localhost", "--out", str(out)]) == 0
    return out / "workspace" / "flip" / "prod_00"


def test_every_name_and_ip_is_in_the_server_certificate(named):
    info = kit_cert(named / "localhost")
    assert info.common_name == "localhost"
    assert info.names == ("localhost", "fl.example.org", "127.0.0.1", "203.0.113.7")
    client = json.loads((named / "hospital-a" / "startup" / "fed_client.json").read_text())
    assert client["servers"][0]["service"]["target"] == "localhost:8002"  # sites still dial the --server name


def test_without_options_the_san_is_the_server_name_only(unnamed):
    assert kit_cert(unnamed / "localhost").names == ("localhost",)


def test_duplicates_and_the_server_name_itself_are_not_repeated():
    config = project_config(
        ["a"],
        server="fl.example.org",
        server_names=["fl.example.org", "proxy.example.org"],
        server_ips=["10.0.0.5", "10.0.0.5"],
    )
    assert config["participants"][0]["host_names"] == ["proxy.example.org", "10.0.0.5"]


def _site_dialing(prod, tmp_path, host, port):
    """A copy of hospital-a's kit whose configuration dials ``host:port``."""
    kit = shutil.copytree(prod / "hospital-a", tmp_path / "hospital-a")
    config_path = kit / "startup" / "fed_client.json"
    config = json.loads(config_path.read_text())
    config["servers"][0]["service"]["target"] = f"{host}:{port}"
    config_path.write_text(json.dumps(config))
    return read_kit(kit)


def test_doctor_warns_when_the_dialled_ip_is_not_in_the_certificate(unnamed, tmp_path):
    with TlsServer(unnamed / "localhost") as server:
        checks = tls_probe(
            _site_dialing(unnamed, tmp_path, "127.0.0.1", server.port),
            "127.0.0.1",
            server.port,
            "127.0.0.1",
            "localhost",
        )
    assert [c.level for c in checks] == [OK, WARN]
    assert "does not name '127.0.0.1'" in checks[1].detail and "--server-ip" in checks[1].detail
    assert server.accepted == ["hospital-a"]


def test_doctor_is_content_when_the_ip_was_provisioned(named, tmp_path):
    with TlsServer(named / "localhost") as server:
        checks = tls_probe(
            _site_dialing(named, tmp_path, "127.0.0.1", server.port), "127.0.0.1", server.port, "127.0.0.1", "localhost"
        )
    assert [c.level for c in checks] == [OK], checks
