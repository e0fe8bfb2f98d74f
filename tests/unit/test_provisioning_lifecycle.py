"""Certificate lifecycle (issue 22 item 4): ``flip provision --renew`` (new keys and certificates, same root CA: an
old site kit and a renewed server kit still accept each other, so kits are swapped one at a time), ``--check``
(each kit's expiry date, a warning under 60 days, exit 1), ``--remove-site`` (out of the project, its key out of
the state, the server kit's disabled_clients.json names it; the name is not given out again).

Real kits from ``nvflare provision``, real mutual TLS on 127.0.0.1 (tests/tls_server.py). Before: none of these
options existed (argparse refused them)."""

from __future__ import annotations

import json
import ssl
import subprocess

import pytest

from flip.cli import main as flip_cli
from flip.ops.certs import kit_cert, read_cert
from flip.provisioning import DISABLED_CLIENTS_FILE, ROOT_VALID_DAYS, load_project
from tests.kits import TlsServer, client_handshake, reissue

pytestmark = pytest.mark.unit


def _prod(out, n):
    return out / "workspace" / "flip" / f"prod_{n:02d}"


@pytest.fixture(scope="module")
def renewed(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits")
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--server", "localhost", "--out", str(out)]) == 0
    assert flip_cli(["provision", "--renew", "--out", str(out)]) == 0
    return out


def test_renew_issues_new_keys_and_certificates_under_the_same_root(renewed):
    old, new = _prod(renewed, 0), _prod(renewed, 1)
    assert (new / "localhost" / "startup" / "rootCA.pem").read_bytes() == (
        old / "localhost" / "startup" / "rootCA.pem"
    ).read_bytes()
    for kit, name in [
        ("localhost", "server"),
        ("hospital-a", "client"),
        ("hospital-b", "client"),
        ("admin@flip.org", "client"),
    ]:
        assert (new / kit / "startup" / f"{name}.key").read_bytes() != (
            old / kit / "startup" / f"{name}.key"
        ).read_bytes()
        assert kit_cert(new / kit).not_after >= kit_cert(old / kit).not_after
        verify = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(old / kit / "startup" / "rootCA.pem"),
                str(new / kit / "startup" / f"{name}.crt"),
            ],
            capture_output=True,
            text=True,
        )
        assert verify.returncode == 0, verify.stderr
    root = read_cert(new / "localhost" / "startup" / "rootCA.pem", "root CA")
    assert 3640 <= root.days_left() <= ROOT_VALID_DAYS  # a new project's root CA: ten years


@pytest.mark.parametrize("server_prod, site_prod", [(1, 0), (0, 1), (1, 1)])
def test_old_and_new_kits_accept_each_other(renewed, server_prod, site_prod):
    """Mutual TLS between a (renewed or old) server kit and a (renewed or old) site kit: swap one at a time."""
    with TlsServer(_prod(renewed, server_prod) / "localhost") as server:
        assert client_handshake(_prod(renewed, site_prod) / "hospital-a", server.port) == "localhost"
    assert server.accepted == ["hospital-a"]


def test_a_kit_of_another_project_is_refused(renewed, tmp_path):
    other = tmp_path / "other"
    assert flip_cli(["provision", "--sites", "hospital-a", "--server", "localhost", "--out", str(other)]) == 0
    with TlsServer(_prod(renewed, 1) / "localhost") as server:
        with pytest.raises(ssl.SSLError):
            client_handshake(_prod(other, 0) / "hospital-a", server.port)


def test_check_lists_every_expiry_and_warns_under_60_days_until_renewed(tmp_path, capsys):
    out = tmp_path / "kits"
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--server", "localhost", "--out", str(out)]) == 0
    capsys.readouterr()
    assert flip_cli(["provision", "--check", "--out", str(out)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["root", "admin@flip.org", "hospital-a", "hospital-b", "localhost"]
    assert all(" expires " in line and "WARNING" not in line for line in listed)

    reissue(out / "workspace" / "flip" / "state", _prod(out, 0) / "hospital-a", 30)
    assert flip_cli(["provision", "--check", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    (warned,) = [line for line in captured.out.splitlines() if "WARNING" in line]
    assert warned.startswith("hospital-a") and "(29 days): WARNING, under 60 days: run flip provision --renew" in warned
    assert "1 certificate(s) expire within 60 days" in captured.err

    assert flip_cli(["provision", "--renew", "--out", str(out)]) == 0
    capsys.readouterr()
    assert flip_cli(["provision", "--check", "--out", str(out)]) == 0  # the latest kits: renewed
    assert "WARNING" not in capsys.readouterr().out


def test_remove_site_takes_it_out_and_the_server_kit_refuses_it(tmp_path, capsys):
    out = tmp_path / "kits"
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--server", "localhost", "--out", str(out)]) == 0
    capsys.readouterr()
    assert flip_cli(["provision", "--remove-site", "hospital-b", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    new = _prod(out, 1)
    assert json.loads((new / "localhost" / DISABLED_CLIENTS_FILE).read_text()) == {"disabled_clients": ["hospital-b"]}
    assert not (new / "hospital-b").exists()
    assert [p["name"] for p in load_project(out)["participants"]] == ["localhost", "hospital-a", "admin@flip.org"]
    state = json.loads((out / "workspace" / "flip" / "state" / "cert.json").read_text())
    assert "hospital-b" not in state and "hospital-a" in state  # the removed site's key is not kept
    assert f"nvflare system disable-client hospital-b --force --startup-kit {new / 'admin@flip.org'}" in said
    assert "its certificate is not revoked" in said and "stays valid until" in said
    # the others' certificates are unchanged: nobody else needs a new kit
    assert (new / "hospital-a" / "startup" / "client.crt").read_bytes() == (
        _prod(out, 0) / "hospital-a" / "startup" / "client.crt"
    ).read_bytes()

    assert flip_cli(["provision", "--add-site", "hospital-b", "--out", str(out)]) == 2
    assert "site 'hospital-b' was removed from" in capsys.readouterr().err
    assert flip_cli(["provision", "--renew", "--out", str(out)]) == 0  # renewal keeps it refused
    assert json.loads((_prod(out, 2) / "localhost" / DISABLED_CLIENTS_FILE).read_text())["disabled_clients"] == [
        "hospital-b"
    ]
    assert not (_prod(out, 2) / "hospital-b").exists()


def test_renew_without_a_project_says_so(tmp_path, capsys):
    assert flip_cli(["provision", "--renew", "--out", str(tmp_path)]) == 2
    assert f"{tmp_path / 'project.yml'} not found" in capsys.readouterr().err
