"""Hostile conditions at a site and in provisioning: what leaves a site, what its logs say, who can read its files.

Each test names, in its docstring, how it failed on the old code.
"""

from __future__ import annotations

import os
import stat
import sys

import pytest

from flip.storage.weed import IDENTITIES_FILE, WeedS3

# -- item 17: the S3 identities file is private from its creation on ------------------------------------------------

_WATCH: dict = {"path": None, "seen": {}}


def _audit(event: str, args) -> None:
    """Record each mode the watched file has at any audit event (with the first event seen at); idle: no cost."""
    path = _WATCH["path"]
    if path is None:
        return
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        return
    _WATCH["seen"].setdefault(oct(mode), event)


if not getattr(sys, "_flip_hostile_audit", False):  # an audit hook cannot be removed: add it once per process
    sys.addaudithook(_audit)
    sys._flip_hostile_audit = True


@pytest.mark.s3
def test_weed_identities_created_0600(tmp_path):
    """With a umask of 0, the old code wrote the file 0666 and chmod-ed it after: the audit hook saw the secret
    key's file readable by everyone at the ``os.chmod`` event (mode 0o666)."""
    server = WeedS3(bucket=None, root=tmp_path)
    identities = tmp_path / IDENTITIES_FILE
    old_umask = os.umask(0)
    _WATCH.update(path=str(identities), seen={})
    try:
        server.start()
    finally:
        _WATCH["path"] = None
        os.umask(old_umask)
    try:
        seen = _WATCH["seen"]
        assert seen, "the identities file was never observed"
        assert seen == {"0o600": seen.get("0o600")}, f"modes the file had (and the first event at each): {seen}"
        assert stat.S_IMODE(identities.stat().st_mode) == 0o600
        assert server.secret_key in identities.read_text()
        server._client().list_buckets()  # the server reads it: authentication works with these credentials
    finally:
        server.stop()


@pytest.mark.unit
def test_private_file_is_replaced_not_written_through(tmp_path):
    """A stale file (0644) or a planted symlink at the path is replaced by a new 0600 file; the symlink's target
    is never written (the old code's ``write_text`` followed it)."""
    from flip.files import write_private

    target = tmp_path / "elsewhere.txt"
    target.write_text("not yours")
    path = tmp_path / "secret.json"
    path.symlink_to(target)
    old_umask = os.umask(0)
    try:
        write_private(path, "key")
        assert not path.is_symlink() and path.read_text() == "key" and target.read_text() == "not yours"
        os.chmod(path, 0o644)
        write_private(path, "key2")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "key2"
