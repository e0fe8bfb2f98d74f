"""A run's ``manifest.json``: its form (one rule, check_manifest), reading it back, and verifying a run against it.

``manifest.json``, written last by upload_run, lists every object's key, size, sha256 and S3 checksum. A run is
uploaded iff its manifest exists and is well formed and every object matches it (verify_run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import ClientError

from flip.checks import check_object_key
from flip.constants import RunFile
from flip.errors import VerificationError
from flip.storage.checksums import CHECKSUM_ALGORITHMS, ENTRY_FIELDS, READ_BLOCK, SHA256_RE, ObjectEntry, stored_matches
from flip.storage.client import head_object, is_not_found, s3_errors

MANIFEST_FORMAT = 1


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
        missing = [f for f in ENTRY_FIELDS if f not in raw]
        extra = sorted(str(f) for f in raw if f not in ENTRY_FIELDS)
        if missing or extra:
            raise bad(
                f"objects[{i}] has missing fields {missing} and extra fields {extra}; "
                f"expected exactly {list(ENTRY_FIELDS)}"
            )
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
        if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
            raise bad(f"objects[{i}].sha256 must be 64 lowercase hex digits, got {sha256!r}")
        if not isinstance(raw["s3_checksum"], str) or not raw["s3_checksum"]:
            raise bad(f"objects[{i}].s3_checksum must be a non-empty string, got {raw['s3_checksum']!r}")
        if raw["s3_checksum_algorithm"] not in CHECKSUM_ALGORITHMS:
            raise bad(
                f"objects[{i}].s3_checksum_algorithm must be one of {list(CHECKSUM_ALGORITHMS)}, "
                f"got {raw['s3_checksum_algorithm']!r}"
            )
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


def read_manifest(client, bucket: str, prefix: str) -> dict[str, Any] | None:
    """Return the run's manifest, or None if it has none (an unfinished upload).

    Raises:
        StorageError: it cannot be read. VerificationError: it is not JSON.
    """
    where = f"{bucket}/{prefix}{RunFile.MANIFEST}"
    with s3_errors(f"cannot read {where}"):
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + RunFile.MANIFEST)["Body"].read()
        except ClientError as exc:
            if is_not_found(exc):
                return None
            raise
    try:
        return json.loads(body)
    except ValueError as exc:
        raise VerificationError(f"{where} is not valid JSON") from exc


def _download_sha256(client, bucket: str, key: str) -> str:
    digest = hashlib.sha256()
    stream = client.get_object(Bucket=bucket, Key=key)["Body"]
    for block in iter(lambda: stream.read(READ_BLOCK), b""):
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
    with s3_errors(f"cannot verify {bucket}/{prefix}", VerificationError):
        for raw in manifest["objects"]:
            entry = ObjectEntry(**raw)
            key = prefix + entry.key
            head = head_object(client, bucket, key)
            if head is None:
                problems.append(f"{entry.key}: missing")
            elif not stored_matches(head, entry, require_checksum=False):
                problems.append(f"{entry.key}: differs from the manifest")
            elif head.get(f"Checksum{entry.s3_checksum_algorithm}") is None and (
                _download_sha256(client, bucket, key) != entry.sha256
            ):
                problems.append(f"{entry.key}: content differs from the manifest")
    if problems:
        raise VerificationError(f"{bucket}/{prefix} does not match its manifest: " + "; ".join(problems[:5]))
    return manifest
