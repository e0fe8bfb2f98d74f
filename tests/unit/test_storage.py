"""Storage helpers that need no server: keys, checksums, and a cleanup that never leaves its run folder."""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest

from flip.checks import check_object_key
from flip.constants import RunFile
from flip.errors import CleanupError
from flip.storage.checksums import describe_file
from flip.storage.client import transfer_config
from flip.storage.layout import run_prefix
from flip.storage.pending import clean_run_dir, find_pending, write_pending

pytestmark = pytest.mark.unit

MODEL_ID = "0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90"


@pytest.mark.parametrize("key", ["../x", "a/../b", "/abs", "a//b", "a/./b", "", "a b", "x\\y"])
def test_unsafe_object_keys_are_refused(key):
    with pytest.raises(ValueError, match="object key .* is invalid"):
        check_object_key(key)


def test_run_prefix_checks_both_parts():
    assert run_prefix(MODEL_ID.upper(), "job-1") == f"{MODEL_ID}/job-1/"
    with pytest.raises(ValueError, match="model_id must be a UUID"):
        run_prefix("model", "job-1")
    with pytest.raises(ValueError, match="run id '../up' is invalid"):
        run_prefix(MODEL_ID, "../up")


def test_checksums_of_a_single_request_and_of_a_multipart_upload(tmp_path):
    data = bytes(range(256)) * 50_000  # 12.8 MB
    path = tmp_path / "model.pt"
    path.write_bytes(data)
    single = describe_file(path, "model.pt")
    assert single.sha256 == hashlib.sha256(data).hexdigest()
    assert (single.s3_checksum_algorithm, single.s3_checksum) == (
        "CRC32",
        base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode(),
    )
    multi = describe_file(path, "model.pt", transfer_config(threshold_mb=5, part_size_mb=5))
    parts = [hashlib.sha256(data[i : i + 5 * 2**20]).digest() for i in range(0, len(data), 5 * 2**20)]
    assert multi.s3_checksum == base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + "-3"
    assert multi.sha256 == single.sha256


def test_part_size_below_the_s3_minimum_is_refused():
    with pytest.raises(ValueError, match="part size must be at least 5 MiB"):
        transfer_config(part_size_mb=4)


def _run_folder(tmp_path):
    workspace = tmp_path / "workspace"
    run = workspace / "job-1"
    (run / "app_server" / "custom").mkdir(parents=True)
    (run / "app_server" / "FL_global_model.pt").write_bytes(b"model")
    (run / "log.txt").write_text("log")
    (run / "error_log.txt").write_text("errors")
    write_pending(run, {"bucket": "b"})
    return workspace, run


def test_cleanup_keeps_logs_and_removes_the_pending_file_last(tmp_path):
    workspace, run = _run_folder(tmp_path)
    deleted = clean_run_dir(run, workspace)
    assert deleted[-1] == RunFile.UPLOAD_PENDING and "app_server" in deleted
    assert sorted(p.name for p in run.iterdir()) == ["error_log.txt", "log.txt"]


def test_cleanup_removes_symlinks_without_following_them(tmp_path):
    workspace, run = _run_folder(tmp_path)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("keep me")
    (run / "link_to_outside").symlink_to(outside, target_is_directory=True)
    clean_run_dir(run, workspace)
    assert (outside / "data.txt").read_text() == "keep me"
    assert not (run / "link_to_outside").exists()


@pytest.mark.parametrize("case", ["symlinked run folder", "outside the workspace", "the workspace itself"])
def test_cleanup_refuses_folders_that_are_not_a_run_folder_inside_the_workspace(tmp_path, case):
    workspace, run = _run_folder(tmp_path)
    target = {
        "symlinked run folder": workspace / "alias",
        "outside the workspace": tmp_path / "elsewhere",
        "the workspace itself": workspace,
    }[case]
    if case == "symlinked run folder":
        target.symlink_to(run, target_is_directory=True)
    elif case == "outside the workspace":
        (target / "x").mkdir(parents=True)
    with pytest.raises(CleanupError, match="refusing to clean"):
        clean_run_dir(target, workspace)
    assert (run / "app_server" / "FL_global_model.pt").exists()


def test_find_pending_looks_in_the_folder_and_below(tmp_path):
    workspace, run = _run_folder(tmp_path)
    assert find_pending(run) == [run]
    assert find_pending(workspace) == [run]
    assert find_pending(tmp_path / "nothing") == []


def _read_when_served(server, key: str, seconds: float = 30.0) -> bytes:
    """The object, once the restarted server's volume answers (S3 answers first: InternalError until then)."""
    import time

    from botocore.exceptions import ClientError

    deadline = time.monotonic() + seconds
    while True:
        try:
            return server._client().get_object(Bucket="flip-models", Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "InternalError" or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.s3
def test_a_weed_whose_data_is_kept_stops_gracefully_and_one_whose_data_goes_is_killed(tmp_path):
    """A server on a folder it was given stops with SIGTERM (its data is there after a restart); one on a folder it
    made is killed at once and its folder removed (nothing to flush: a graceful stop waits up to 10 s for clients'
    open connections)."""
    from flip.storage.weed import WeedS3

    kept = WeedS3(bucket="flip-models", root=tmp_path / "kept").start()
    kept._client().put_object(Bucket="flip-models", Key="model/global_model.pt", Body=b"weights")
    kept.stop()
    assert kept.process.returncode != -9  # SIGTERM: weed exits on its own
    try:
        kept.restart()  # the same data and ports
        assert _read_when_served(kept, "model/global_model.pt") == b"weights"
    finally:
        kept.stop(graceful=False)
    assert kept.process.returncode == -9 and (tmp_path / "kept" / "data").is_dir()  # killed; a given folder is kept

    throwaway = WeedS3(bucket=None).start()
    folder = throwaway.root
    throwaway.stop()
    assert throwaway.process.returncode == -9 and not folder.exists()
