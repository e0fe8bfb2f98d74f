"""Service units (issue 22 item 5): ``flip provision`` writes a systemd unit and a private environment file for the
server and for each site: start at boot, restart on failure, the kit's own watchdog, the environment file (0600)
for the AWS_* and hub keys, and where the logs are. ``systemd-analyze verify`` accepts each unit once its kit is
installed where the unit says. Before: no unit, no environment file."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from flip.cli import main as flip_cli
from flip.ops.service import env_name, unit_name

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Kits provisioned for a service root in a temporary folder, and the site's and server's kits installed there."""
    root = tmp_path_factory.mktemp("opt")
    out = tmp_path_factory.mktemp("kits")
    assert (
        flip_cli(
            [
                "provision",
                "--sites",
                "hospital-a",
                "--server",
                "localhost",
                "--service-root",
                str(root),
                "--service-user",
                "root",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    prod = out / "workspace" / "flip" / "prod_00"
    for kit in ("hospital-a", "localhost"):
        shutil.copytree(prod / kit, root / kit, symlinks=True)
    return root


@pytest.mark.parametrize("name, role", [("hospital-a", "site"), ("localhost", "server")])
def test_a_unit_per_server_and_site(installed, name, role):
    unit = (installed / name / "service" / unit_name(name)).read_text()
    kit = installed / name
    for line in [
        f"ExecStart={kit}/startup/sub_start.sh",
        "Restart=on-failure",
        "WantedBy=multi-user.target",
        f"EnvironmentFile=/etc/flip/{env_name(name)}",
        f"WorkingDirectory={kit}",
        "User=root",
        f"Environment=PATH={installed}/venv/bin:/usr/local/bin:/usr/bin:/bin",
        "After=network-online.target",
    ]:
        assert line in unit.splitlines(), line
    assert f"Logs: {kit}/log.txt and error_log.txt" in unit and f"journalctl -u {unit_name(name)}" in unit
    env = installed / name / "service" / env_name(name)
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    text = env.read_text()
    if role == "server":
        assert "# FLIP_HUB_API_KEY=" in text and "# AWS_SECRET_ACCESS_KEY=" in text
    else:
        assert "FLIP_HUB_API_KEY" not in text.replace("neither the hub key", "") and "AWS_SECRET" not in text
        assert f"FLIP_LOCAL_DIR={installed}/{name}-data" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["hospital-a", "localhost"])
def test_systemd_accepts_the_installed_unit(installed, name):
    unit = installed / name / "service" / unit_name(name)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"},
    )
    assert result.returncode == 0, result.stderr
    assert os.access(installed / name / "startup" / "sub_start.sh", os.X_OK)


def test_the_admin_kit_has_no_unit(tmp_path):
    assert flip_cli(["provision", "--sites", "1", "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "workspace" / "flip" / "prod_00" / "admin@flip.org" / "service").exists()
