"""Upload a run's artifacts to S3 under ``<model_id>/<run_id>/`` with a manifest written last.

Each object is sent with a checksum the S3 server checks on receipt and keeps (see flip.storage.checksums) and
compared, once stored, with the file. A run is never replaced: the manifest is written only if the prefix holds
none (or one listing exactly the same files). Re-running an upload skips objects that already match.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from flip.checks import check_object_key
from flip.constants import RunFile
from flip.errors import StorageError, UploadError, VerificationError
from flip.files import to_json
from flip.storage.checksums import ObjectEntry, describe_file, part_size_for, stored_matches
from flip.storage.client import DEFAULT_TRANSFER, error_code, head_object, s3_error, s3_errors
from flip.storage.manifest import MANIFEST_FORMAT, check_manifest, check_manifest_matches, read_manifest

_NO_BUCKET = ("404", "NoSuchBucket", "NotFound")
#: a conditional put (If-None-Match: *) refused because the object appeared meanwhile
_PRECONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict")
#: a server without conditional writes
_NOT_IMPLEMENTED = ("NotImplemented", "501")


def ensure_bucket(client, bucket: str, *, create: bool = False) -> None:
    """Check that ``bucket`` exists and is reachable; create it only when ``create`` is true.

    Raises:
        StorageError: the bucket is missing (and not to be created) or not accessible.
    """
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:  # a missing bucket is an answer of its own
        if error_code(exc) not in _NO_BUCKET:
            raise s3_error(exc, f"bucket {bucket!r} is not accessible") from exc
    except BotoCoreError as exc:
        raise s3_error(exc, f"cannot reach the S3 server for bucket {bucket!r}") from exc
    if not create:
        raise StorageError(f"bucket {bucket!r} does not exist (set FLIP_S3_CREATE_BUCKET=true to create it)")
    with s3_errors(f"cannot create bucket {bucket!r}"):
        client.create_bucket(Bucket=bucket)


def upload_run(
    client,
    bucket: str,
    prefix: str,
    files: Mapping[str, Path],
    info: Mapping[str, Any],
    *,
    sse: str | None = None,
    transfer: TransferConfig = DEFAULT_TRANSFER,
    on_object: Callable[[ObjectEntry, bool], None] | None = None,
) -> dict[str, Any]:
    """Upload ``files`` (relative key -> local path) under ``prefix`` and write ``manifest.json`` last.

    Objects already present with the same size and checksums are skipped, so a re-run completes an
    interrupted upload without duplicating or half-overwriting anything. A run is never replaced: if the prefix
    already holds a manifest, the files are hashed first and must be exactly the ones it lists (same keys,
    sha256, sizes), else nothing is uploaded; without one, the manifest is written only if none appeared
    meanwhile (a conditional put, ``If-None-Match: *``).

    Args:
        client: an S3 client (see make_s3_client).
        bucket: destination bucket (must exist).
        prefix: ``<model_id>/<run_id>/`` from run_prefix.
        files: relative object keys to local files.
        info: extra manifest fields (job id, rounds, sites, versions...).
        sse: server-side encryption (``AES256`` or ``aws:kms``) or None.
        transfer: boto3 managed-transfer settings.
        on_object: called with each entry and whether it was uploaded (False: already there).

    Returns:
        The manifest that was written.

    Raises:
        UploadError: an object could not be uploaded, the server's checksum disagrees with ours, or the prefix
            holds (or meanwhile got) a manifest of other files.
    """
    extra: dict[str, Any] = {"ServerSideEncryption": sse} if sse else {}
    manifest_key = prefix + RunFile.MANIFEST
    existing = _existing_manifest(client, bucket, prefix)
    known: dict[str, ObjectEntry] = {}
    if existing is not None:
        try:
            known = {k: describe_file(Path(files[k]), k, transfer) for k in files}
            check_manifest_matches(existing, {k: asdict(e) for k, e in known.items()}, f"{bucket}/{manifest_key}")
        except VerificationError as exc:
            raise UploadError(
                f"refusing to upload to {bucket}/{prefix}: it holds another run, which is never replaced ({exc})"
            ) from exc
        except OSError as exc:
            raise UploadError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    entries: list[ObjectEntry] = []
    # The file is hashed on a second thread while it is being sent: the hashes are needed only to check what
    # the server stored, so hashing costs no wall time (the server checks each request's checksum itself).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flip-hash") as hasher:
        for rel_key in sorted(files):
            if rel_key == RunFile.MANIFEST:
                raise ValueError(f"{RunFile.MANIFEST} is written by upload_run itself; do not pass it in files")
            path = Path(files[rel_key])
            key = prefix + check_object_key(rel_key)
            if rel_key in known:
                hashed: Future = Future()
                hashed.set_result(known[rel_key])
            else:
                hashed = hasher.submit(describe_file, path, rel_key, transfer)
            with s3_errors(f"upload to {bucket}/{key} failed", UploadError, also=(OSError,)):
                present = head_object(client, bucket, key)
                if present is not None and present.get("ContentLength") == path.stat().st_size:
                    if stored_matches(present, hashed.result(), require_checksum=True):
                        entries.append(hashed.result())
                        if on_object:
                            on_object(hashed.result(), False)
                        continue
                if part_size_for(path.stat().st_size, transfer) is None:
                    with open(path, "rb") as body:
                        client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC32", **extra)
                else:
                    client.upload_file(
                        str(path), bucket, key, Config=transfer, ExtraArgs={"ChecksumAlgorithm": "SHA256", **extra}
                    )
                landed = head_object(client, bucket, key)
            entry = hashed.result()
            if not stored_matches(landed, entry, require_checksum=False):
                raise UploadError(f"upload to {bucket}/{key} failed: the stored object does not match the local file")
            entries.append(entry)
            if on_object:
                on_object(entry, True)

    manifest = {
        **info,
        "format": MANIFEST_FORMAT,
        "prefix": prefix,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "objects": [asdict(e) for e in entries],
    }
    body = to_json(manifest, indent=2, sort_keys=True).encode()
    put = {
        "Bucket": bucket,
        "Key": manifest_key,
        "Body": body,
        "ContentType": "application/json",
        "ChecksumAlgorithm": "CRC32",
        **extra,
    }
    with s3_errors(f"upload to {bucket}/{manifest_key} failed", UploadError):
        if existing is not None:  # the same files: the manifest is rewritten with what it already says
            client.put_object(**put)
            return manifest
        try:
            client.put_object(**put, IfNoneMatch="*")
        except ClientError as exc:
            if error_code(exc) in _PRECONDITION_FAILED:
                raise UploadError(
                    f"upload to {bucket}/{manifest_key} refused: another upload wrote a manifest "
                    f"there meanwhile, and a run is never replaced"
                ) from exc
            if error_code(exc) not in _NOT_IMPLEMENTED:
                raise
            # a server without conditional writes: check, then put
            if _existing_manifest(client, bucket, prefix) is not None:
                raise UploadError(
                    f"upload to {bucket}/{manifest_key} refused: another upload wrote a manifest "
                    f"there meanwhile, and a run is never replaced"
                ) from exc
            client.put_object(**put)
    return manifest


def _existing_manifest(client, bucket: str, prefix: str) -> dict[str, Any] | None:
    """The manifest already at ``prefix`` (checked with check_manifest), or None; one that is not valid counts as
    another run's (UploadError: it is never replaced)."""
    try:
        existing = read_manifest(client, bucket, prefix)
        return None if existing is None else check_manifest(existing, f"{bucket}/{prefix}{RunFile.MANIFEST}", prefix)
    except VerificationError as exc:
        raise UploadError(f"refusing to upload to {bucket}/{prefix}: {exc}; a run there is never replaced") from exc
    except StorageError as exc:
        raise UploadError(f"upload to {bucket}/{prefix} failed: {exc}") from exc


def abort_incomplete_uploads(client, bucket: str, prefix: str) -> int:
    """Abort multipart uploads left unfinished under ``prefix`` (e.g. by a server killed mid-transfer)."""
    aborted = 0
    with s3_errors(f"cannot list unfinished uploads in {bucket}/{prefix}"):
        listing = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        for upload in listing.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    return aborted
