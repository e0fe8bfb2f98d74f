"""Façade kept for existing callers (``from flip.storage import s3``; ``s3.upload_run``, ``s3.verify_run``...).

It only re-exports; new code imports from the modules that hold the code:

- flip.storage.client: make_s3_client, transfer_config/DEFAULT_TRANSFER, describe_error and s3_errors (boto errors
  to ours);
- flip.storage.layout: run_prefix, unique_run_id, is_unique_run_id_of (key rules: flip.checks);
- flip.storage.checksums: ObjectEntry, describe_file, part_size_for;
- flip.storage.manifest: MANIFEST_FORMAT, check_manifest, check_manifest_matches, read_manifest, verify_run;
- flip.storage.upload: ensure_bucket, upload_run, abort_incomplete_uploads.
"""

from __future__ import annotations

from flip.checks import check_model_id, check_object_key
from flip.storage.checksums import ObjectEntry, describe_file, part_size_for
from flip.storage.client import DEFAULT_CONCURRENCY, DEFAULT_TRANSFER, describe_error, make_s3_client, transfer_config
from flip.storage.layout import is_unique_run_id_of, run_prefix, unique_run_id
from flip.storage.manifest import MANIFEST_FORMAT, check_manifest, check_manifest_matches, read_manifest, verify_run
from flip.storage.upload import abort_incomplete_uploads, ensure_bucket, upload_run

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_TRANSFER",
    "MANIFEST_FORMAT",
    "ObjectEntry",
    "abort_incomplete_uploads",
    "check_manifest",
    "check_manifest_matches",
    "check_model_id",
    "check_object_key",
    "describe_error",
    "describe_file",
    "ensure_bucket",
    "is_unique_run_id_of",
    "make_s3_client",
    "part_size_for",
    "read_manifest",
    "run_prefix",
    "transfer_config",
    "unique_run_id",
    "upload_run",
    "verify_run",
]
