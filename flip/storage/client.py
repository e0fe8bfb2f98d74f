"""The S3 client: how it is built, boto3's transfer settings, and the one translation of boto errors into ours.

Every S3 call of flip.storage runs inside ``s3_errors`` (or raises ``s3_error`` where an answer has a meaning of its
own, e.g. 404: the object is missing), so a failure always reaches the caller as a StorageError subclass whose
message ends with a short cause (describe_error: an error code or an exception type; never credentials) and whose
``__cause__`` is boto's exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from flip.constants import DEFAULT_PART_SIZE_MB, DEFAULT_THRESHOLD_MB
from flip.errors import StorageError

#: What a boto3 S3 call raises: an error answer, a client-side failure (connection, timeout...), or a managed
#: transfer's failure (upload_file wraps the first two in it).
BOTO_ERRORS: tuple[type[Exception], ...] = (ClientError, BotoCoreError, S3UploadFailedError)

_MIB = 1024 * 1024
#: Defaults measured with benchmarks/s3_upload.py (README, performance): up to 1 GiB an object goes in one
#: request whose SHA-256 we computed while describing the file (botocore does not hash it again); above,
#: 64 MiB parts, 4 at a time (smaller parts or more threads were slower). DEFAULT_THRESHOLD_MB and
#: DEFAULT_PART_SIZE_MB live in flip.constants, shared with the settings.
DEFAULT_CONCURRENCY = 4

_DENIED = {"403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


def transfer_config(
    threshold_mb: int = DEFAULT_THRESHOLD_MB,
    part_size_mb: int = DEFAULT_PART_SIZE_MB,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> TransferConfig:
    """boto3 managed-transfer settings: objects of ``threshold_mb`` or more go in ``part_size_mb`` parts."""
    if part_size_mb < 5:
        raise ValueError(f"part size must be at least 5 MiB (an S3 limit), got {part_size_mb}")
    return TransferConfig(
        multipart_threshold=threshold_mb * _MIB,
        multipart_chunksize=part_size_mb * _MIB,
        max_concurrency=concurrency,
        use_threads=True,
    )


DEFAULT_TRANSFER = transfer_config()


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


def error_code(exc: ClientError) -> str | None:
    """Return the S3 error code of an error answer (``NoSuchKey``, ``404``, ``PreconditionFailed``...)."""
    return exc.response.get("Error", {}).get("Code")


def is_not_found(exc: ClientError) -> bool:
    """Is ``exc`` the S3 server saying the object does not exist?"""
    return error_code(exc) in _NOT_FOUND


def describe_error(exc: BaseException) -> str:
    """A short cause for an S3 failure (an error code or exception type; never credentials)."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        hint = ": access denied, check the S3 credentials" if code in _DENIED else ""
        return f"{code} (HTTP {status}){hint}"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, S3UploadFailedError) and cause is not None:
        return describe_error(cause)
    return type(exc).__name__


def s3_error(exc: BaseException, what: str, error: type[StorageError] = StorageError) -> StorageError:
    """Return ``error("<what>: <short cause>")`` for a failed S3 call; raise it ``from exc``.

    Args:
        exc: what boto raised.
        what: what failed, e.g. ``cannot read bucket/key``.
        error: the StorageError subclass to return.
    """
    return error(f"{what}: {describe_error(exc)}")


@contextmanager
def s3_errors(
    what: str, error: type[StorageError] = StorageError, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Turn a boto error raised in the block (BOTO_ERRORS, and ``also``) into ``s3_error(exc, what, error)``.

    Args:
        what: what failed, e.g. ``cannot list s3://bucket/prefix``.
        error: the StorageError subclass to raise.
        also: other exception types to translate the same way (e.g. OSError while a file is sent).

    Raises:
        error: ``<what>: <short cause>``, from the boto error.
    """
    try:
        yield
    except BOTO_ERRORS + also as exc:
        raise s3_error(exc, what, error) from exc


def head_object(client, bucket: str, key: str) -> dict | None:
    """Return the object's HEAD with its stored checksums, or None if it does not exist (other errors: boto's)."""
    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise
