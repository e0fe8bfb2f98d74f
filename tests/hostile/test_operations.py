"""Hostile inputs to the operator's commands (issue 22): a provisioning state others can read, bad server names and
IPs, bad service settings, an environment file line that may hold a secret, a foreign folder given to
``flip trial data``, impossible lifecycle requests, and a pid file that points at a process the trial S3 server
did not start. Each is refused with an error naming the value (never a secret) and nothing is run, written,
deleted or killed.

Each fails on the code before issue 22: the options and commands did not exist (argparse refused them, exit 2
without the named message), state/ was 0755 and cert.json 0644 and nothing checked them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from flip.cli import main as flip_cli
from flip.errors import FlipError
from flip.ops.doctor import read_env_file
from flip.ops.service import check_service_root, check_service_user
from flip.provisioning import project_config
from flip.storage.service import PID_FILE, serving_pid, stop_s3

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits")
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--server", "localhost", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("target", ["state", "state/cert.json"])
@pytest.mark.parametrize(
    "command",
    [["--renew"], ["--add-site", "hospital-z"], ["--remove-site", "hospital-b"], ["--sites", "hospital-a,hospital-b"]],
)
def test_a_state_others_can_read_is_refused_naming_it(out, capsys, target, command):
    path = out / "workspace" / "flip" / target
    before = sorted(p.name for p in (out / "workspace" / "flip").iterdir())
    path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        assert flip_cli(["provision", *command, "--out", str(out)]) == 2
    finally:
        path.chmod(0o700 if path.is_dir() else 0o600)
    err = capsys.readouterr().err
    assert f"{path} is open to other users (mode {'0755' if path.is_dir() else '0644'})" in err
    assert f"chmod -R go= {out / 'workspace' / 'flip' / 'state'}" in err
    assert sorted(p.name for p in (out / "workspace" / "flip").iterdir()) == before  # nothing ran


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"server_ips": ["::1"]}, "server IP '::1' is invalid: an IPv4 address"),
        ({"server_ips": ["10.0.0"]}, "server IP '10.0.0' is invalid"),
        ({"server_ips": ["10.0.0.1\n"]}, "server IP '10.0.0.1\\\\n' is invalid"),
        ({"server_ips": ["010.0.0.1"]}, "server IP '010.0.0.1' is invalid"),
        ({"server_names": ["bad name"]}, "server name 'bad name' is invalid"),
    ],
)
def test_bad_names_and_ips_are_refused_naming_them(bad, message):
    with pytest.raises(ValueError, match=message):
        project_config(["a"], server="localhost", **bad)


@pytest.mark.parametrize(
    "check, bad, message",
    [
        (check_service_root, "opt/flip", "service root 'opt/flip' is invalid: an absolute path"),
        (check_service_root, "/opt/flip dir", "service root '/opt/flip dir' is invalid"),
        (check_service_root, "/opt/../etc", "service root '/opt/../etc' is invalid"),
        (check_service_user, "Flip", "service user 'Flip' is invalid"),
        (check_service_user, "flip\n", "service user 'flip\\\\n' is invalid"),
    ],
)
def test_bad_service_settings_are_refused_naming_them(check, bad, message):
    with pytest.raises(ValueError, match=message):
        check(bad)


def test_an_env_file_line_that_is_not_key_value_is_named_not_shown(tmp_path):
    env_file = tmp_path / "x.env"
    env_file.write_text("A=1\nthe secret is hunter2\n")
    with pytest.raises(FlipError, match=r"x.env line 2 is not KEY=VALUE\Z"):
        read_env_file(env_file)


def test_trial_data_refuses_a_folder_that_is_not_its_own(tmp_path, capsys):
    foreign = tmp_path / "images"
    foreign.mkdir()
    (foreign / "patient.png").write_text("not the trial's")
    assert flip_cli(["trial", "data", "--sites", "hospital-a", "--dir", str(foreign)]) == 2
    assert f"{foreign} is not empty and was not created by flip trial data" in capsys.readouterr().err
    assert (foreign / "patient.png").read_text() == "not the trial's"
    assert flip_cli(["trial", "data", "--sites", "bad name", "--dir", str(tmp_path / "x")]) == 2
    assert "site name 'bad name' is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--remove-site", "hospital-q"], "'hospital-q' is not a site of"),
        (["--remove-site", "hospital-a"], "'hospital-a' is the last site of"),
        (["--renew", "--check"], "give one of --add-site, --remove-site, --renew or --check, got --renew and --check"),
    ],
)
def test_bad_lifecycle_requests_are_refused_naming_them(tmp_path, capsys, args, message):
    out = tmp_path / "kits"
    assert flip_cli(["provision", "--sites", "hospital-a", "--server", "localhost", "--out", str(out)]) == 0
    assert flip_cli(["provision", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err


def test_a_pid_file_naming_another_process_stops_nothing(tmp_path):
    """``flip s3 stop`` ends only the ``flip s3 serve`` of its folder: a pid file naming any other process (here a
    ``sleep``, as a reused pid would) is ignored and that process lives on."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        root = tmp_path / "s3"
        root.mkdir()
        (root / PID_FILE).write_text(f"{other.pid}\n")
        assert serving_pid(root) is None
        assert stop_s3(root) is None
        assert other.poll() is None  # still running
        (root / PID_FILE).write_text(f"{os.getpid()}\n")  # a python process, but not a flip s3 serve of this folder
        assert stop_s3(root) is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["status", "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90", "--wait", "nan"],
            "--wait must be a finite number >= 0, got nan",
        ),
        (
            ["status", "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90", "--wait", "-1"],
            "--wait must be a finite number >= 0, got -1.0",
        ),
        (["doctor", "--kit", ".", "--timeout", "0"], "--timeout must be a finite number > 0, got 0.0"),
        (["doctor", "--kit", ".", "--wait", "inf"], "--wait must be a finite number >= 0, got inf"),
        (["provision", "--check", "--out", ".", "--warn-days", "-1"], "--warn-days must be an integer >= 0, got -1"),
    ],
)
def test_waits_and_timeouts_that_never_end_are_refused(capsys, args, message):
    """``flip status --wait nan`` polled forever (nan is never <= 0)."""
    assert flip_cli(args) == 2
    assert message in capsys.readouterr().err
