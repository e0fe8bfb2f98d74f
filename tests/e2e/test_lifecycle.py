"""Certificate lifecycle with real processes (issue 22 item 4): after ``flip provision --renew`` and
``--remove-site hospital-b``, the server started from the newest kit accepts hospital-a still on its *old* kit
(same root CA: kits are swapped one at a time) and refuses the removed hospital-b by name; ``nvflare system
disable-client`` (what ``--remove-site`` tells the operator to run) takes a running site out at once. Every process
started is stopped, and none is left.

NVFlare 2.9's mechanism (docs/nvflare-internals.md row 35): the server's disabled-clients list; no certificate is
revoked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flip.cli import main as flip_cli
from flip.storage.weed import free_ports
from tests.conftest import REPO, clean_env
from tests.e2e.processes import kill, processes_of, wait_gone

pytestmark = pytest.mark.e2e
JOINED = "Client: New client {}@"
REFUSED = "Reject disabled client registration: {}"


def _until(what: str, check, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


def test_renewed_server_old_site_kit_and_removed_sites(tmp_path):
    fed, admin = free_ports(2)
    out = tmp_path / "kits"
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
                "--server-storage",
                str(tmp_path / "storage"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert flip_cli(["provision", "--renew", "--out", str(out)]) == 0
    assert flip_cli(["provision", "--remove-site", "hospital-b", "--out", str(out)]) == 0
    old, new = out / "workspace" / "flip" / "prod_00", out / "workspace" / "flip" / "prod_02"
    server, admin_kit = new / "localhost", new / "admin@flip.org"
    env = clean_env("FLIP_", "AWS_", "NVFLARE_", "NVFL_")
    env.update(
        {
            "HOME": str(tmp_path),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        }
    )
    nvflare = str(Path(sys.executable).with_name("nvflare"))
    log = server / "log.txt"

    def server_log() -> str:
        return log.read_text(errors="replace") if log.is_file() else ""

    try:
        for kit in (server, old / "hospital-a", old / "hospital-b"):
            subprocess.run(
                [str(kit / "startup" / "start.sh")],
                env=env,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        _until("hospital-a (old kit) joins the renewed server", lambda: JOINED.format("hospital-a") in server_log())
        _until("the removed hospital-b is refused", lambda: REFUSED.format("hospital-b") in server_log())
        assert JOINED.format("hospital-b") not in server_log()

        done = subprocess.run(
            [nvflare, "system", "disable-client", "hospital-a", "--force", "--startup-kit", str(admin_kit)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        _until("the server drops hospital-a", lambda: "Client hospital-a disabled." in server_log())
        site_log = old / "hospital-a" / "log.txt"
        _until(
            "hospital-a's heartbeats are refused",
            lambda: "Failed to send heartbeat" in site_log.read_text(errors="replace"),
        )
        assert server_log().count(JOINED.format("hospital-a")) == 1  # never let in again
        listed = json.loads((server / "disabled_clients.json").read_text())["disabled_clients"]
        assert sorted(listed) == ["hospital-a", "hospital-b"]  # persisted: refused after a restart too

        stopped = subprocess.run(
            # NVFlare's own 30 s wait for the server to stop was once too short on a loaded 2-core machine
            [nvflare, "system", "shutdown", "all", "--force", "--timeout", "100", "--startup-kit", str(admin_kit)],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        for kit in (old / "hospital-a", old / "hospital-b"):  # refused sites do not hear the shutdown: NVFlare's
            (kit / "shutdown.fl").touch()  # own stop file ends their watchdog
        assert wait_gone(tmp_path, seconds=90) == [], "processes left after the shutdown"
    finally:
        kill(processes_of(tmp_path))
