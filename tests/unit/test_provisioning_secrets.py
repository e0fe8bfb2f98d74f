"""Secrets at rest (issue 22 item 2): the provisioning state (the root CA's key and every participant's) and every
kit's private key are private to their owner and the command says so (a state folder others can access is
refused before anything runs, naming it: tests/hostile/test_operations.py).

Before: state/ was 0755 and state/cert.json 0644 (readable by every user of the machine), and nothing checked."""

from __future__ import annotations

import stat

import pytest

from flip.cli import main as flip_cli
from flip.ops.permissions import shared_paths

pytestmark = pytest.mark.unit


def _mode(path):
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("kits")
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--server", "localhost", "--out", str(out)]) == 0
    return out


def test_state_and_every_private_key_are_owner_only(out):
    state = out / "workspace" / "flip" / "state"
    assert _mode(state) == 0o700
    assert _mode(state / "cert.json") == 0o600
    keys = sorted((out / "workspace" / "flip" / "prod_00").glob("*/startup/*.key"))
    assert [k.parent.parent.name for k in keys] == ["admin@flip.org", "hospital-a", "hospital-b", "localhost"]
    for key in keys:
        assert _mode(key) == 0o600, key
        assert _mode(key.parent) == 0o700, key.parent
    envs = sorted((out / "workspace" / "flip" / "prod_00").glob("*/service/*.env"))
    assert len(envs) == 3 and all(_mode(e) == 0o600 for e in envs)  # server and sites: secrets go there
    assert shared_paths(state) == []


def test_the_command_says_so(tmp_path, capsys):
    assert flip_cli(["provision", "--sites", "1", "--out", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert f"secrets: every private key and {tmp_path / 'workspace' / 'flip' / 'state'}" in said
    assert "readable by you only (files 0600, folders 0700)" in said
