"""Upload a run's artifacts to S3 under ``<model_id>/<run_id>/`` with a manifest, and verify them.

Every object is sent with a checksum the S3 server checks on receipt and keeps (CRC32 for one request, SHA-256 for
each part of a multipart upload through boto3's managed transfer); we work the same checksum out locally, plus the
file's sha256, and compare with what the server kept. ``manifest.json``, written last, lists every object's key,
size, sha256 and checksum. A run is uploaded iff its manifest exists and
every object matches it. Re-running an upload skips objects that already match.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from boto3.exceptions import S3UploadFailedError as S3TransferFailed
from s3transfer.utils import ChunksizeAdjuster

from flip.constants import DEFAULT_PART_SIZE_MB, DEFAULT_THRESHOLD_MB, RunFile
from flip.errors import StorageError, UploadError, VerificationError
from flip.files import to_json
from flip.checks import check_model_id, check_object_key, check_path_name

MANIFEST_FORMAT = 1
_READ_BLOCK = 8 * 1024 * 1024
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_RUN_STAMP = r"\d{8}T\d{6}Z-[0-9a-f]{6}"

_MIB = 1024 * 1024
#: Defaults measured with benchmarks/s3_upload.py (README, performance): up to 1 GiB an object goes in one
#: request whose SHA-256 we computed while describing the file (botocore does not hash it again); above,
#: 64 MiB parts, 4 at a time (smaller parts or more threads were slower). DEFAULT_THRESHOLD_MB and
#: DEFAULT_PART_SIZE_MB live in flip.constants, shared with the settings.
DEFAULT_CONCURRENCY = 4


def transfer_config(threshold_mb: int = DEFAULT_THRESHOLD_MB, part_size_mb: int = DEFAULT_PART_SIZE_MB,
                    concurrency: int = DEFAULT_CONCURRENCY) -> TransferConfig:
    """boto3 managed-transfer settings: objects of ``threshold_mb`` or more go in ``part_size_mb`` parts."""
    if part_size_mb < 5:
        raise ValueError(f"part size must be at least 5 MiB (an S3 limit), got {part_size_mb}")
    return TransferConfig(multipart_threshold=threshold_mb * _MIB, multipart_chunksize=part_size_mb * _MIB,
                          max_concurrency=concurrency, use_threads=True)


DEFAULT_TRANSFER = transfer_config()




def run_prefix(model_id: str, run_id: str) -> str:
    """Return the S3 prefix of one run: ``<model_id>/<run_id>/`` (both checked)."""
    return f"{check_model_id(model_id)}/{check_path_name('run id', run_id)}/"


def unique_run_id(stem: str) -> str:
    """Return a run id no other upload will pick: ``<stem>-<UTC time stamp>-<6 random hex digits>``."""
    return check_path_name("run id", f"{stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}")


def is_unique_run_id_of(stem: str, run_id: str) -> bool:
    """Is ``run_id`` one that ``unique_run_id(stem)`` could have returned?"""
    return isinstance(run_id, str) and re.fullmatch(re.escape(stem) + "-" + _RUN_STAMP, run_id) is not None


def make_s3_client(*, max_attempts: int = 5, connect_timeout: float = 10, read_timeout: float = 120):
    """Build an S3 client from boto3's own settings chain (``AWS_*`` variables, profiles, instance roles).

    Retries use botocore's standard mode (``AWS_RETRY_MODE=adaptive`` and ``AWS_MAX_ATTEMPTS`` are honoured);
    a custom endpoint (``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, e.g. SeaweedFS) gets path-style addressing;
    the region defaults to us-east-1.
    """
    session = boto3.session.Session()
    max_attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", max_attempts))
    mode = os.environ.get("AWS_RETRY_MODE", "standard")
    custom_endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    config = Config(
        retries={"mode": mode if mode in ("standard", "adaptive") else "standard", "max_attempts": max_attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path" if custom_endpoint else "auto"},
    )
    return session.client("s3", region_name=session.region_name or "us-east-1", config=config)


_DENIED = {"403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}


def describe_error(exc: BaseException) -> str:
    """A short cause for an S3 failure (an error code or exception type; never credentials)."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        hint = ": access denied, check the S3 credentials" if code in _DENIED else ""
        return f"{code} (HTTP {status}){hint}"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, S3TransferFailed) and cause is not None:
        return describe_error(cause)
    return type(exc).__name__


@dataclass(frozen=True)
class ObjectEntry:
    """One uploaded object as recorded in the manifest.

    ``s3_checksum`` is what the S3 server itself computes and keeps for the object, worked out locally from the
    file: a CRC32 for an object sent in one request, the composite SHA-256 (of the parts' SHA-256s, ``-N``
    suffix) for a multipart one.
    """

    key: str
    size: int
    sha256: str
    s3_checksum: str
    s3_checksum_algorithm: str = "SHA256"


_ENTRY_FIELDS = tuple(f.name for f in fields(ObjectEntry))
_CHECKSUM_ALGORITHMS = ("CRC32", "SHA256")


def check_manifest(manifest: Any, where: str, prefix: str | None = None) -> dict[str, Any]:
    """Return ``manifest`` if it has the form upload_run writes, else raise VerificationError naming the problem.

    The one rule for every manifest read back: a JSON object with ``format`` 1, a string ``created``, ``prefix``
    equal to the run's prefix (when ``prefix`` is given) and a non-empty list ``objects``; each object has
    exactly the fields of ObjectEntry: a safe key (not manifest.json, no repeats), an integer size >= 0, a
    sha256 of 64 lowercase hex digits, a non-empty S3 checksum and its algorithm (CRC32 or SHA256).

    Args:
        manifest: the parsed ``manifest.json``.
        where: how to name it in the error (``bucket/prefix/manifest.json``).
        prefix: the run's prefix the manifest must name; None: not checked.

    Raises:
        VerificationError: ``<where> is not a valid manifest: <problem>``.
    """
    def bad(problem: str) -> VerificationError:
        return VerificationError(f"{where} is not a valid manifest: {problem}")

    if not isinstance(manifest, dict):
        raise bad(f"expected a JSON object, got a {type(manifest).__name__}")
    fmt = manifest.get("format")
    if type(fmt) is not int or fmt != MANIFEST_FORMAT:
        raise bad(f"format must be {MANIFEST_FORMAT}, got {fmt!r}")
    if not isinstance(manifest.get("created"), str):
        raise bad(f"created must be a string, got {manifest.get('created')!r}")
    if prefix is not None and manifest.get("prefix") != prefix:
        raise bad(f"prefix must be {prefix!r}, got {manifest.get('prefix')!r}")
    objects = manifest.get("objects")
    if not isinstance(objects, list) or not objects:
        raise bad("objects must be a non-empty list, got " + ("[]" if objects == [] else type(objects).__name__))
    seen: set[str] = set()
    for i, raw in enumerate(objects):
        if not isinstance(raw, dict):
            raise bad(f"objects[{i}] must be an object, got a {type(raw).__name__}")
        missing = [f for f in _ENTRY_FIELDS if f not in raw]
        extra = sorted(str(f) for f in raw if f not in _ENTRY_FIELDS)
        if missing or extra:
            raise bad(f"objects[{i}] has missing fields {missing} and extra fields {extra}; "
                      f"expected exactly {list(_ENTRY_FIELDS)}")
        key = raw["key"]
        try:
            check_object_key(key)
        except ValueError as exc:
            raise bad(f"objects[{i}]: {exc}") from exc
        if key == RunFile.MANIFEST or key in seen:
            raise bad(f"objects[{i}].key {key!r} is {'repeated' if key in seen else 'reserved'}")
        seen.add(key)
        size, sha256 = raw["size"], raw["sha256"]
        if type(size) is not int or size < 0:
            raise bad(f"objects[{i}].size must be an integer >= 0, got {size!r}")
        if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
            raise bad(f"objects[{i}].sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if not isinstance(raw["s3_checksum"], str) or not raw["s3_checksum"]:
            raise bad(f"objects[{i}].s3_checksum must be a non-empty string, got {raw['s3_checksum']!r}")
        if raw["s3_checksum_algorithm"] not in _CHECKSUM_ALGORITHMS:
            raise bad(f"objects[{i}].s3_checksum_algorithm must be one of {list(_CHECKSUM_ALGORITHMS)}, "
                      f"got {raw['s3_checksum_algorithm']!r}")
    return manifest


def check_manifest_matches(manifest: dict[str, Any], staged: Mapping[str, Mapping[str, Any]], where: str) -> None:
    """Check that a valid manifest (see check_manifest) lists exactly the staged files: same keys, sha256, sizes.

    Args:
        manifest: the manifest found in S3.
        staged: object key -> ``{"sha256": ..., "size": ...}`` of what this run staged.
        where: how to name the manifest in the error.

    Raises:
        VerificationError: naming the first few keys that differ.
    """
    listed = {o["key"]: (o["sha256"], o["size"]) for o in manifest["objects"]}
    wanted = {key: (f["sha256"], f["size"]) for key, f in staged.items()}
    problems = [f"{k}: not staged by this run" for k in sorted(listed.keys() - wanted.keys())]
    problems += [f"{k}: staged but not listed" for k in sorted(wanted.keys() - listed.keys())]
    problems += [f"{k}: sha256/size differ" for k in sorted(listed.keys() & wanted.keys()) if listed[k] != wanted[k]]
    if problems:
        raise VerificationError(f"{where} describes other files than this run staged: " + "; ".join(problems[:5]))


def part_size_for(size: int, transfer: TransferConfig) -> int | None:
    """The part size boto3's managed transfer will use for a file of ``size`` bytes (None: one request)."""
    if size < transfer.multipart_threshold:
        return None
    return ChunksizeAdjuster().adjust_chunksize(transfer.multipart_chunksize, size)


def describe_file(path: Path, key: str, transfer: TransferConfig = DEFAULT_TRANSFER) -> ObjectEntry:
    """Hash a file once: its sha256 and the checksum the S3 server will compute for it (see ObjectEntry)."""
    size = path.stat().st_size
    part_size = part_size_for(size, transfer)
    full = hashlib.sha256()
    crc = 0
    parts: list[bytes] = []
    part = hashlib.sha256()
    in_part = 0
    with open(path, "rb") as f:
        while block := f.read(_READ_BLOCK if part_size is None else min(_READ_BLOCK, part_size - in_part)):
            full.update(block)
            if part_size is None:
                crc = zlib.crc32(block, crc)
                continue
            part.update(block)
            in_part += len(block)
            if in_part == part_size:
                parts.append(part.digest())
                part, in_part = hashlib.sha256(), 0
    if part_size is None:
        return ObjectEntry(check_object_key(key), size, full.hexdigest(),
                           base64.b64encode(crc.to_bytes(4, "big")).decode(), "CRC32")
    if in_part:
        parts.append(part.digest())
    checksum = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + f"-{len(parts)}"
    return ObjectEntry(check_object_key(key), size, full.hexdigest(), checksum, "SHA256")


def _not_found(exc: ClientError) -> bool:
    """Is ``exc`` the S3 server saying the object does not exist?"""
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _head(client, bucket: str, key: str) -> dict | None:
    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise


def _matches(head: dict | None, entry: ObjectEntry, *, require_checksum: bool) -> bool:
    """Does the stored object (its HEAD) match ``entry``? Without a server checksum: only if not required."""
    if head is None or head.get("ContentLength") != entry.size:
        return False
    server = head.get(f"Checksum{entry.s3_checksum_algorithm}")
    if server is None:
        return not require_checksum
    return server == entry.s3_checksum


def ensure_bucket(client, bucket: str, *, create: bool = False) -> None:
    """Check that ``bucket`` exists and is reachable; create it only when ``create`` is true.

    Raises:
        StorageError: the bucket is missing (and not to be created) or not accessible.
    """
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"bucket {bucket!r} is not accessible: {describe_error(exc)}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot reach the S3 server for bucket {bucket!r}: {describe_error(exc)}") from exc
    if not create:
        raise StorageError(f"bucket {bucket!r} does not exist (set FLIP_S3_CREATE_BUCKET=true to create it)")
    try:
        client.create_bucket(Bucket=bucket)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot create bucket {bucket!r}: {describe_error(exc)}") from exc


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
            raise UploadError(f"refusing to upload to {bucket}/{prefix}: it holds another run, which is never "
                              f"replaced ({exc})") from exc
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
            try:
                present = _head(client, bucket, key)
                if present is not None and present.get("ContentLength") == path.stat().st_size:
                    if _matches(present, hashed.result(), require_checksum=True):
                        entries.append(hashed.result())
                        if on_object:
                            on_object(hashed.result(), False)
                        continue
                if part_size_for(path.stat().st_size, transfer) is None:
                    with open(path, "rb") as body:
                        client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumAlgorithm="CRC32", **extra)
                else:
                    client.upload_file(str(path), bucket, key, Config=transfer,
                                       ExtraArgs={"ChecksumAlgorithm": "SHA256", **extra})
                landed = _head(client, bucket, key)
            except (ClientError, BotoCoreError, S3TransferFailed, OSError) as exc:
                raise UploadError(f"upload to {bucket}/{key} failed: {describe_error(exc)}") from exc
            entry = hashed.result()
            if not _matches(landed, entry, require_checksum=False):
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
    put = {"Bucket": bucket, "Key": manifest_key, "Body": body, "ContentType": "application/json",
           "ChecksumAlgorithm": "CRC32", **extra}
    try:
        if existing is not None:  # the same files: the manifest is rewritten with what it already says
            client.put_object(**put)
            return manifest
        try:
            client.put_object(**put, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                raise UploadError(f"upload to {bucket}/{manifest_key} refused: another upload wrote a manifest "
                                  f"there meanwhile, and a run is never replaced") from exc
            if exc.response.get("Error", {}).get("Code") not in ("NotImplemented", "501"):
                raise
            # a server without conditional writes: check, then put
            if _existing_manifest(client, bucket, prefix) is not None:
                raise UploadError(f"upload to {bucket}/{manifest_key} refused: another upload wrote a manifest "
                                  f"there meanwhile, and a run is never replaced") from exc
            client.put_object(**put)
    except (ClientError, BotoCoreError) as exc:
        raise UploadError(f"upload to {bucket}/{manifest_key} failed: {describe_error(exc)}") from exc
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
    try:
        listing = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        for upload in listing.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            aborted += 1
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list unfinished uploads in {bucket}/{prefix}: {describe_error(exc)}") from exc
    return aborted


def read_manifest(client, bucket: str, prefix: str) -> dict[str, Any] | None:
    """Return the run's manifest, or None if it has none (an unfinished upload)."""
    try:
        body = client.get_object(Bucket=bucket, Key=prefix + RunFile.MANIFEST)["Body"].read()
    except ClientError as exc:
        if _not_found(exc):
            return None
        raise StorageError(f"cannot read {bucket}/{prefix}{RunFile.MANIFEST}: {describe_error(exc)}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot read {bucket}/{prefix}{RunFile.MANIFEST}: {describe_error(exc)}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise VerificationError(f"{bucket}/{prefix}{RunFile.MANIFEST} is not valid JSON") from exc


def _download_sha256(client, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    stream = client.get_object(Bucket=bucket, Key=key)["Body"]
    for block in iter(lambda: stream.read(_READ_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def verify_run(client, bucket: str, prefix: str, manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check every object of the run against its manifest (``manifest`` if the caller has read it already, else
    read here) and return the manifest.

    The manifest must be valid (check_manifest: an empty or malformed one never verifies). Sizes, the metadata
    sha256 and the server-computed S3 checksum must all match; where a server keeps no checksum, the object is
    downloaded and hashed.

    Raises:
        VerificationError: no manifest, a malformed one, or an object is missing or differs (the first few are
            named).
    """
    if manifest is None:
        manifest = read_manifest(client, bucket, prefix)
    if manifest is None:
        raise VerificationError(f"{bucket}/{prefix} has no {RunFile.MANIFEST}: the upload did not finish")
    check_manifest(manifest, f"{bucket}/{prefix}{RunFile.MANIFEST}", prefix)
    problems = []
    try:
        for raw in manifest["objects"]:
            entry = ObjectEntry(**raw)
            key = prefix + entry.key
            head = _head(client, bucket, key)
            if head is None:
                problems.append(f"{entry.key}: missing")
            elif not _matches(head, entry, require_checksum=False):
                problems.append(f"{entry.key}: differs from the manifest")
            elif head.get(f"Checksum{entry.s3_checksum_algorithm}") is None and (
                _download_sha256(client, bucket, key) != entry.sha256
            ):
                problems.append(f"{entry.key}: content differs from the manifest")
    except (ClientError, BotoCoreError) as exc:
        raise VerificationError(f"cannot verify {bucket}/{prefix}: {describe_error(exc)}") from exc
    if problems:
        raise VerificationError(f"{bucket}/{prefix} does not match its manifest: " + "; ".join(problems[:5]))
    return manifest
