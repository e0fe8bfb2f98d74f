"""A run's upload, recorded before it starts (``upload_pending.json``) so it can always be finished later.

The server stages the run's artifacts in ``<run folder>/flip_upload/`` and writes ``upload_pending.json`` in the run
folder (record_pending): the run's model id, job id and run id, and each staged file's path, sha256 and size. Only
after the upload verified does it clean the run folder, removing the pending file last. If anything fails, the
folder and the file stay, and ``flip upload --resume <folder>`` (or this module's ``resume``) finishes the same
upload: objects already in S3 and matching are skipped, unfinished multipart uploads are aborted.

A pending file is honoured only as the server wrote it for that run (read_pending): at the top level of a run
folder named by its job id, never inside the job's app folder; every staged path inside ``flip_upload/`` (symlinks
resolved); the bucket the settings give and the prefix its own model id and run id give; and resume re-hashes every
staged file before sending it. The folder to clean is the run folder itself, inside its parent (the server
workspace): nothing in the file chooses what gets deleted.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from flip.checks import check_model_id, check_object_key, check_path_name
from flip.constants import SIMULATOR_JOB_ID, RunFile
from flip.errors import CleanupError, StorageError, UploadError, VerificationError
from flip.files import write_json_atomic
from flip.storage.checksums import SHA256_RE, file_digest
from flip.storage.client import DEFAULT_TRANSFER, make_s3_client
from flip.storage.layout import is_unique_run_id_of, run_prefix
from flip.storage.manifest import check_manifest, check_manifest_matches, read_manifest, verify_run
from flip.storage.upload import abort_incomplete_uploads, ensure_bucket, upload_run

PENDING_FORMAT = 2
_LOG_PREFIXES = ("log", "error_log")
_FIELDS = ("format", "model_id", "job_id", "run_id", "bucket", "prefix", "info", "files")
_FILE_FIELDS = ("path", "sha256", "size")
#: NVFlare's app folders in a run folder (app_server, app_site-1): the job's own content, never a run folder
_APP_PREFIX = "app_"
#: the simulator's workspace keeps the server's run folders in server/
_SIMULATOR_SERVER = "server"


def is_log_file(name: str) -> bool:
    """NVFlare's run logs (kept for the operator after cleanup): log.txt, log.json, error_log.txt, rotations."""
    return name.startswith(_LOG_PREFIXES) and (".txt" in name or ".json" in name)


def write_pending(folder: Path, pending: dict[str, Any]) -> Path:
    return write_json_atomic(Path(folder) / RunFile.UPLOAD_PENDING, pending, indent=2, sort_keys=True)


def staged_path(folder: Path, rel: Any) -> Path:
    """Return ``folder / rel`` if ``rel`` is a relative path that stays, symlinks resolved, inside the run folder's
    staging folder ``flip_upload/``.

    Raises:
        UploadError: naming the path (absolute, with '..', or resolving outside ``<folder>/flip_upload/``).
    """
    staging = Path(folder).resolve() / RunFile.STAGING_DIR
    if (
        not isinstance(rel, str)
        or not rel
        or PurePosixPath(rel).is_absolute()
        or "\\" in rel
        or ":" in rel
        or ".." in PurePosixPath(rel).parts
    ):
        raise UploadError(f"staged path {rel!r} is refused: expected a relative path inside {staging}")
    path = Path(folder) / rel
    resolved = path.resolve()
    if not resolved.is_relative_to(staging) or resolved == staging:
        raise UploadError(f"staged path {rel!r} is refused: it resolves to {resolved}, outside {staging}")
    return path


def record_pending(
    folder: Path,
    *,
    model_id: str,
    job_id: str,
    run_id: str,
    bucket: str,
    files: Mapping[str, Path],
    info: Mapping[str, Any],
) -> dict[str, Any]:
    """Describe the staged ``files`` (object key -> file in ``<folder>/flip_upload/``) and write
    ``upload_pending.json`` in the run folder ``folder``; return the record.

    Args:
        folder: the run folder (its name is the job id).
        model_id, job_id, run_id: the run; the S3 prefix is ``<model_id>/<run_id>/``.
        bucket: the models bucket.
        files: object key -> staged file; each is hashed (sha256, size) so a resume can check it is the same.
        info: extra manifest fields (rounds, sites, versions...).

    Raises:
        UploadError: a staged file is outside the staging folder. OSError: it cannot be read or the record written.
    """
    folder = Path(folder)
    described = {}
    for key, path in sorted(files.items()):
        rel = Path(path).relative_to(folder).as_posix()
        sha256, size = file_digest(staged_path(folder, rel))
        described[check_object_key(key)] = {"path": rel, "sha256": sha256, "size": size}
    record = {
        "format": PENDING_FORMAT,
        "model_id": check_model_id(model_id),
        "job_id": job_id,
        "run_id": run_id,
        "bucket": bucket,
        "prefix": run_prefix(model_id, run_id),
        "info": dict(info),
        "files": described,
    }
    write_pending(folder, record)
    return record


def _inside_app_folder(folder: Path) -> Path | None:
    """The NVFlare app folder (``app_<name>/`` with a ``config/`` folder) that holds ``folder``, if any."""
    for parent in (folder.resolve(), *folder.resolve().parents):
        if parent.name.startswith(_APP_PREFIX) and (parent / "config").is_dir():
            return parent
    return None


def read_pending(folder: Path, bucket: str) -> dict[str, Any]:
    """Read the run folder's ``upload_pending.json`` and return it if it is the record the server wrote for this
    run (see the module's docstring); the staged files' hashes are checked by complete_upload.

    Args:
        folder: the run folder.
        bucket: the models bucket the settings give (FLIP_MODELS_BUCKET): the record must name it.

    Raises:
        UploadError: naming the refused value.
    """
    folder = Path(folder)
    path = folder / RunFile.UPLOAD_PENDING
    if folder.is_symlink():
        raise UploadError(f"refusing {path}: the run folder {folder} is a symlink")
    app = _inside_app_folder(folder)
    if app is not None:
        raise UploadError(f"refusing {path}: it is inside the job's app folder {app}, not the server's run folder")
    try:
        pending = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UploadError(f"cannot read {path}: {type(exc).__name__}") from exc
    if not isinstance(pending, dict) or pending.get("format") != PENDING_FORMAT:
        got = pending.get("format") if isinstance(pending, dict) else type(pending).__name__
        raise UploadError(f"refusing {path}: format {got!r} is not the record flip writes (format {PENDING_FORMAT})")
    if sorted(pending) != sorted(_FIELDS):
        raise UploadError(f"refusing {path}: it has the fields {sorted(pending)}, expected {sorted(_FIELDS)}")
    job_id, run_id = pending["job_id"], pending["run_id"]
    if job_id != folder.name:
        raise UploadError(f"refusing {path}: it is for job {job_id!r}, but the run folder is {folder.name!r}")
    if not (run_id == job_id or (job_id == SIMULATOR_JOB_ID and is_unique_run_id_of(job_id, run_id))):
        raise UploadError(f"refusing {path}: run id {run_id!r} is not one of job {job_id!r}")
    try:
        prefix = run_prefix(pending["model_id"], check_path_name("run id", run_id))
    except ValueError as exc:
        raise UploadError(f"refusing {path}: {exc}") from exc
    if pending["prefix"] != prefix:
        raise UploadError(
            f"refusing {path}: prefix {pending['prefix']!r} is not {prefix!r}, the prefix of its model id and run id"
        )
    if pending["bucket"] != bucket:
        raise UploadError(
            f"refusing {path}: bucket {pending['bucket']!r} is not FLIP_MODELS_BUCKET {bucket!r} "
            f"(set FLIP_MODELS_BUCKET to the run's bucket to finish it there)"
        )
    if not isinstance(pending["info"], dict):
        raise UploadError(f"refusing {path}: info must be an object, got {type(pending['info']).__name__}")
    files = pending["files"]
    if not isinstance(files, dict) or not files:
        raise UploadError(f"refusing {path}: files must be a non-empty object, got {files!r}")
    for key, entry in files.items():
        try:
            check_object_key(key)
        except ValueError as exc:
            raise UploadError(f"refusing {path}: {exc}") from exc
        if key == RunFile.MANIFEST or not isinstance(entry, dict) or sorted(entry) != sorted(_FILE_FIELDS):
            raise UploadError(f"refusing {path}: files[{key!r}] must be {{path, sha256, size}}, got {entry!r}")
        staged_path(folder, entry["path"])
        if not (
            isinstance(entry["sha256"], str)
            and SHA256_RE.fullmatch(entry["sha256"])
            and type(entry["size"]) is int
            and entry["size"] >= 0
        ):
            raise UploadError(
                f"refusing {path}: files[{key!r}] needs a sha256 of 64 lowercase hex digits and a size "
                f">= 0, got {entry['sha256']!r} and {entry['size']!r}"
            )
    return pending


def find_pending(path: str | Path) -> list[Path]:
    """Run folders with an ``upload_pending.json``: ``path`` itself, else the run folders in ``path`` (a server
    workspace) or in ``path/server/`` (a simulator workspace). Nothing deeper is looked at: a run folder's own
    content (its ``app_*`` folders, what the job shipped) is never taken for a run folder."""
    path = Path(path)
    if (path / RunFile.UPLOAD_PENDING).is_file():
        return [path]
    if not path.is_dir() or _is_run_folder(path):
        return []
    found = []
    for workspace in (path, path / _SIMULATOR_SERVER):
        if workspace.is_dir() and not workspace.is_symlink() and not _is_run_folder(workspace):
            found += [
                child
                for child in workspace.iterdir()
                if child.is_dir()
                and not child.is_symlink()
                and not child.name.startswith(_APP_PREFIX)
                and (child / RunFile.UPLOAD_PENDING).is_file()
            ]
    return sorted(found)


def _is_run_folder(path: Path) -> bool:
    """Does ``path`` hold an NVFlare app folder (``app_server``, ``app_site-1``...)?"""
    return any(child.name.startswith(_APP_PREFIX) and child.is_dir() for child in path.iterdir())


def check_staged_files(folder: Path, pending: dict[str, Any]) -> dict[str, Path]:
    """Re-hash every staged file and return object key -> path if each is the one recorded.

    Raises:
        UploadError: a staged file is missing, refused (see staged_path) or not the one recorded (named).
    """
    files = {}
    for key, entry in sorted(pending["files"].items()):
        path = staged_path(folder, entry["path"])
        try:
            sha256, size = file_digest(path)
        except OSError as exc:
            raise UploadError(
                f"the staged {key} ({entry['path']}) cannot be read in {folder}: {exc.strerror}; "
                f"the upload cannot be finished"
            ) from exc
        if (sha256, size) != (entry["sha256"], entry["size"]):
            raise UploadError(
                f"the staged {key} ({entry['path']}) is not the file recorded in "
                f"{RunFile.UPLOAD_PENDING} (sha256 or size differ): refusing to upload it"
            )
        files[key] = path
    return files


def complete_upload(
    folder: Path,
    pending: dict[str, Any],
    *,
    sse: str | None = None,
    create_bucket: bool = False,
    transfer=None,
    log: Callable[[str], None] | None = None,
    check_files: bool = True,
) -> dict[str, Any]:
    """Make sure what ``pending`` (see record_pending) describes is in S3 and verified; return the manifest.

    A manifest already at the prefix is accepted only if it lists exactly the staged files (keys, sha256, sizes):
    if it verifies, the run is left as it is; if its objects are damaged, they are uploaded again. A manifest of
    other files is never replaced. Otherwise unfinished multipart uploads under the prefix are aborted, the staged
    files are checked against the record (``check_files``) and uploaded (matching objects skipped), then verified.

    Args:
        folder: the run folder.
        pending: the record (record_pending, or read_pending for a resume).
        sse: server-side encryption (``AES256``, ``aws:kms``) or None.
        create_bucket: create a missing bucket.
        transfer: boto3 managed-transfer settings (default: flip's).
        log: called with one line per step.
        check_files: re-hash the staged files before sending them (False: the caller has just written them).

    Raises:
        StorageError (UploadError, VerificationError): the upload is not complete; nothing was deleted.
    """
    client = make_s3_client()
    bucket, prefix = pending["bucket"], pending["prefix"]
    where = f"{bucket}/{prefix}{RunFile.MANIFEST}"
    ensure_bucket(client, bucket, create=create_bucket)
    existing = read_manifest(client, bucket, prefix)
    if existing is not None:
        check_manifest(existing, where, prefix)
        check_manifest_matches(existing, pending["files"], where)
        try:
            manifest = verify_run(client, bucket, prefix, existing)
        except VerificationError as exc:
            if log:
                log(f"uploading again: {exc}")
        else:
            if log:
                log(f"s3://{bucket}/{prefix} is already uploaded and verified")
            return manifest
    aborted = abort_incomplete_uploads(client, bucket, prefix)
    if aborted and log:
        log(f"aborted {aborted} unfinished multipart upload(s) under s3://{bucket}/{prefix}")
    if check_files:
        files = check_staged_files(folder, pending)
    else:
        files = {key: Path(folder) / entry["path"] for key, entry in pending["files"].items()}

    def on_object(entry, uploaded):
        if log:
            log(f"{'uploaded' if uploaded else 'already present'}: {entry.key} ({entry.size} bytes)")

    info = {
        **pending["info"],
        "model_id": pending["model_id"],
        "job_id": pending["job_id"],
        "run_id": pending["run_id"],
    }
    upload_run(client, bucket, prefix, files, info, sse=sse, transfer=transfer or DEFAULT_TRANSFER, on_object=on_object)
    manifest = verify_run(client, bucket, prefix)
    check_manifest_matches(manifest, pending["files"], where)
    return manifest


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


def resume(
    path: str | Path, settings=None, *, platform=None, log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """Finish every pending upload at ``path`` (see find_pending): complete, verify, report, then clean.

    Bucket, encryption, bucket creation and part sizes come from ``settings``; the pending record must name the
    same bucket. The folder cleaned is the run folder, inside its parent (the server workspace). The platform (if
    given) gets RESULTS_UPLOADED for each run finished, or ERROR with the cause.

    Args:
        path: a run folder, a server workspace or a simulator workspace.
        settings: flip's settings (default: load_settings()).
        platform: where to report the status; None: not reported.
        log: called with one line per step.

    Raises:
        StorageError or CleanupError: the first run that could not be finished (its folder is kept).
    """
    from flip.constants import RunStatus
    from flip.settings import load_settings

    settings = settings or load_settings()
    folders = find_pending(path)
    if not folders:
        raise UploadError(
            f"no {RunFile.UPLOAD_PENDING} in the run folder {path} or in the run folders of the "
            f"workspace {path}: there is nothing to resume"
        )
    manifests = []
    for folder in folders:
        folder = folder.absolute()
        pending = read_pending(folder, settings.models_bucket)
        model_id, run_id = pending["model_id"], pending["run_id"]
        try:
            manifest = complete_upload(
                folder,
                pending,
                sse=settings.s3_sse,
                create_bucket=settings.s3_create_bucket,
                transfer=settings.transfer(),
                log=log,
            )
            log(f"verified s3://{pending['bucket']}/{pending['prefix']} ({len(manifest['objects'])} objects)")
            clean_run_dir(folder, folder.parent)
        except (StorageError, CleanupError) as exc:
            if platform is not None:
                platform.report_status(model_id, run_id, RunStatus.ERROR, f"resume failed: {exc}")
            raise
        if platform is not None:
            platform.report_status(model_id, run_id, RunStatus.RESULTS_UPLOADED)
        log(f"cleaned {folder}")
        manifests.append(manifest)
    return manifests
