"""A run's upload, recorded before it starts (``upload_pending.json``) so it can always be finished later.

The server stages the run's artifacts in ``<run folder>/flip_upload/`` and writes ``upload_pending.json`` in the run
folder; only after the upload verified does it clean the run folder, removing the pending file last. If anything
fails, the folder and the file stay, and ``flip upload --resume <folder>`` (or this module's ``resume``) finishes
the same upload: objects already in S3 and matching are skipped, unfinished multipart uploads are aborted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from flip.constants import RunFile
from flip.errors import CleanupError, StorageError, UploadError, VerificationError
from flip.files import write_json_atomic
from flip.storage import s3

_LOG_PREFIXES = ("log", "error_log")


def is_log_file(name: str) -> bool:
    """NVFlare's run logs (kept for the operator after cleanup): log.txt, log.json, error_log.txt, rotations."""
    return name.startswith(_LOG_PREFIXES) and (".txt" in name or ".json" in name)


def write_pending(folder: Path, pending: dict[str, Any]) -> Path:
    return write_json_atomic(folder / RunFile.UPLOAD_PENDING, pending, indent=2, sort_keys=True)


def read_pending(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RunFile.UPLOAD_PENDING
    try:
        pending = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UploadError(f"cannot read {path}: {type(exc).__name__}") from exc
    for field in ("bucket", "prefix", "files", "info", "workspace_root"):
        if field not in pending:
            raise UploadError(f"{path} lacks {field!r}: it was not written by flip")
    return pending


def find_pending(path: str | Path) -> list[Path]:
    """Run folders at or under ``path`` that hold an upload_pending.json."""
    path = Path(path)
    if (path / RunFile.UPLOAD_PENDING).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(RunFile.UPLOAD_PENDING))


def complete_upload(folder: Path, pending: dict[str, Any], *, create_bucket: bool = False, transfer=None,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Make sure what ``pending`` describes is in S3 and verified; return the manifest.

    A run whose manifest already verifies is left as it is; otherwise unfinished multipart uploads under its
    prefix are aborted and the staged files are uploaded (matching objects skipped), then verified.

    Raises:
        StorageError (UploadError, VerificationError): the upload is not complete; nothing was deleted.
    """
    client = s3.make_s3_client()
    bucket, prefix = pending["bucket"], pending["prefix"]
    s3.ensure_bucket(client, bucket, create=create_bucket)
    try:
        manifest = s3.verify_run(client, bucket, prefix)
        if log:
            log(f"s3://{bucket}/{prefix} is already uploaded and verified")
        return manifest
    except VerificationError:
        pass
    aborted = s3.abort_incomplete_uploads(client, bucket, prefix)
    if aborted and log:
        log(f"aborted {aborted} unfinished multipart upload(s) under s3://{bucket}/{prefix}")
    files = {key: Path(folder) / rel for key, rel in pending["files"].items()}
    missing = [key for key, p in files.items() if not p.is_file()]
    if missing:
        raise UploadError(f"the staged {', '.join(missing[:3])} are missing from {folder}: the upload cannot be finished")

    def on_object(entry, uploaded):
        if log:
            log(f"{'uploaded' if uploaded else 'already present'}: {entry.key} ({entry.size} bytes)")

    s3.upload_run(client, bucket, prefix, files, pending["info"], sse=pending.get("sse"),
                  transfer=transfer or s3.DEFAULT_TRANSFER, on_object=on_object)
    return s3.verify_run(client, bucket, prefix)


def clean_run_dir(folder: Path, root: Path) -> list[str]:
    """Delete everything the run created in ``folder`` except NVFlare's logs; upload_pending.json goes last.

    Refuses (CleanupError) a folder that is a symlink or resolves outside ``root``; symlinks inside are
    removed as links, never followed. Returns the names deleted.
    """
    folder, root = Path(folder), Path(root).resolve()
    resolved = folder.resolve()
    if folder.is_symlink() or not resolved.is_relative_to(root) or resolved == root:
        raise CleanupError(f"refusing to clean {folder}: it is not a run folder inside the workspace {root}")
    deleted = []
    children = sorted(folder.iterdir(), key=lambda p: p.name == RunFile.UPLOAD_PENDING)
    try:
        for child in children:
            if is_log_file(child.name):
                continue
            if child.is_symlink() or not child.is_dir():
                child.unlink()
            else:
                if not child.resolve().is_relative_to(resolved):
                    raise CleanupError(f"refusing to delete {child}: it resolves outside {folder}")
                shutil.rmtree(child)
            deleted.append(child.name)
    except OSError as exc:
        raise CleanupError(f"cleanup of {folder} failed at {exc.filename}: {exc.strerror}") from exc
    return deleted


def resume(path: str | Path, *, create_bucket: bool = False, transfer=None, platform=None,
           log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Finish every pending upload at or under ``path``: complete, verify, report, then clean.

    The platform (if given) gets RESULTS_UPLOADED for each run finished, or ERROR with the cause.

    Raises:
        StorageError or CleanupError: the first run that could not be finished (its folder is kept).
    """
    from flip.constants import RunStatus

    folders = find_pending(path)
    if not folders:
        raise UploadError(f"no {RunFile.UPLOAD_PENDING} at or under {path}: there is nothing to resume")
    manifests = []
    for folder in folders:
        pending = read_pending(folder)
        model_id, run_id = pending["info"].get("model_id"), pending["info"].get("run_id")
        try:
            manifest = complete_upload(folder, pending, create_bucket=create_bucket, transfer=transfer, log=log)
            log(f"verified s3://{pending['bucket']}/{pending['prefix']} ({len(manifest['objects'])} objects)")
            clean_run_dir(folder, Path(pending["workspace_root"]))
        except (StorageError, CleanupError) as exc:
            if platform is not None and model_id:
                platform.report_status(model_id, run_id, RunStatus.ERROR, f"resume failed: {exc}")
            raise
        if platform is not None and model_id:
            platform.report_status(model_id, run_id, RunStatus.RESULTS_UPLOADED)
        log(f"cleaned {folder}")
        manifests.append(manifest)
    return manifests
