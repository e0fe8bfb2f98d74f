"""Provisioning: startup kits with FLIP's allow-list entry and the site-enforced privacy policy; adding a hospital
later keeps the root CA and every existing certificate."""

from __future__ import annotations

import json
import subprocess

import pytest

from flip.cli import main as flip_cli
from flip.provisioning import project_config, render_project
from tests.conftest import REPO

pytestmark = pytest.mark.e2e  # `flip provision` and `nvflare provision` write real startup kits


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits")
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--out", str(out)]) == 0
    return out


def test_kits_for_the_server_every_site_and_the_admin(provisioned):
    prod = provisioned / "workspace" / "flip" / "prod_00"
    assert sorted(p.name for p in prod.iterdir() if p.is_dir()) == [
        "admin@flip.org",
        "hospital-a",
        "hospital-b",
        "server",
    ]
    for site in ("hospital-a", "hospital-b"):
        startup = prod / site / "startup"
        assert {"fed_client.json", "client.crt", "client.key", "rootCA.pem", "start.sh"} <= {
            p.name for p in startup.iterdir()
        }
    assert (prod / "admin@flip.org" / "startup" / "fed_admin.json").is_file()
    server = json.loads((prod / "server" / "startup" / "fed_server.json").read_text())
    assert server["servers"][0]["admin_port"] == 8003


def test_flip_classes_pass_the_allow_list_and_nvflares_own_stay(provisioned):
    prod = provisioned / "workspace" / "flip" / "prod_00"
    for participant in ("server", "hospital-a", "hospital-b"):
        allow = json.loads((prod / participant / "local" / "resources.json.default").read_text())["class_allow_list"]
        assert "flip." in allow
        assert len(allow) > 50  # the built-in list is kept, not replaced


def test_every_site_enforces_the_percentile_filter_on_every_result(provisioned):
    prod = provisioned / "workspace" / "flip" / "prod_00"
    for site in ("hospital-a", "hospital-b"):
        policy = json.loads((prod / site / "local" / "privacy.json").read_text())
        (scope,) = policy["scopes"]
        assert policy["default_scope"] == scope["name"] == "default"
        (result_filter,) = scope["task_result_filters"]
        assert result_filter["path"] == "flip.nvflare.components.PercentilePrivacy"
        assert result_filter["args"] == {"percentile": 10.0, "gamma": 0.01, "site_policy": True}
    assert not (prod / "server" / "local" / "privacy.json").exists()


def _read(path):
    return path.read_bytes()


def test_adding_a_hospital_keeps_the_root_ca_and_existing_certificates(provisioned):
    before = provisioned / "workspace" / "flip" / "prod_00"
    assert flip_cli(["provision", "--add-site", "hospital-c", "--out", str(provisioned)]) == 0
    after = provisioned / "workspace" / "flip" / "prod_01"
    assert _read(after / "server" / "startup" / "rootCA.pem") == _read(before / "server" / "startup" / "rootCA.pem")
    for site in ("hospital-a", "hospital-b"):
        for name in ("client.crt", "client.key", "rootCA.pem"):
            assert _read(after / site / "startup" / name) == _read(before / site / "startup" / name), (site, name)
    assert _read(after / "server" / "startup" / "server.crt") == _read(before / "server" / "startup" / "server.crt")
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(before / "server" / "startup" / "rootCA.pem"),
            str(after / "hospital-c" / "startup" / "client.crt"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0 and "OK" in verify.stdout
    assert (after / "hospital-c" / "local" / "privacy.json").is_file()
    project = (provisioned / "project.yml").read_text()
    assert '"hospital-c"' in project  # later provisioning keeps the new site


def test_bad_site_names_and_ports_are_named(tmp_path):
    with pytest.raises(ValueError, match="site name 'bad name' is invalid"):
        project_config(["bad name"])
    with pytest.raises(ValueError, match="fed_learn_port must be a TCP port"):
        project_config(["a"], fed_learn_port=70000)
    assert flip_cli(["provision", "--add-site", "hospital-z", "--out", str(tmp_path)]) == 2
    for bad in ("my server", "-server", "fl..example.org", "a" * 64):
        with pytest.raises(ValueError, match=f"server name '{bad}' is invalid: the DNS name"):
            project_config(["a"], server=bad)


def test_the_server_name_is_the_host_every_kit_connects_to(tmp_path, capsys):
    assert (
        flip_cli(
            [
                "provision",
                "--sites",
                "1",
                "--server",
                "localhost",
                "--fed-port",
                "9102",
                "--admin-port",
                "9103",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "sites connect to localhost:9102 and admins to localhost:9103" in capsys.readouterr().out
    prod = tmp_path / "workspace" / "flip" / "prod_00"
    client = json.loads((prod / "site-1" / "startup" / "fed_client.json").read_text())
    assert client["servers"][0]["service"]["target"] == "localhost:9102"
    admin = json.loads((prod / "admin@flip.org" / "startup" / "fed_admin.json").read_text())
    assert (admin["admin"]["host"], admin["admin"]["port"]) == ("localhost", 9103)
    assert (prod / "localhost" / "startup" / "start.sh").is_file()


def test_checked_in_template_is_what_flip_provision_writes():
    expected = render_project(project_config(["hospital-1", "hospital-2"]))
    assert (REPO / "provisioning" / "project.yml").read_text() == expected, "regenerate provisioning/project.yml"
