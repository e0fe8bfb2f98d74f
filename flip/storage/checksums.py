"""What an object's bytes are: its sha256, size and the checksum the S3 server computes and keeps for it.

Every object is sent with a checksum the S3 server checks on receipt and keeps (CRC32 for one request, SHA-256 for
each part of a multipart upload through boto3's managed transfer); describe_file works the same checksum out
locally, plus the file's sha256, so what the server kept can be compared with the file (stored_matches).
"""

from __future__ import annotations

import base64
import hashlib
import re
import zlib
from dataclasses import dataclass, fields
from pathlib import Path

from boto3.s3.transfer import TransferConfig
from s3transfer.utils import ChunksizeAdjuster

from flip.checks import check_object_key
from flip.storage.client import DEFAULT_TRANSFER

#: a sha256 as we write it: 64 lowercase hex digits (use with fullmatch)
SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: the S3 checksums an ObjectEntry may name
CHECKSUM_ALGORITHMS = ("CRC32", "SHA256")
READ_BLOCK = 8 * 1024 * 1024


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


ENTRY_FIELDS = tuple(f.name for f in fields(ObjectEntry))


def file_digest(path: Path) -> tuple[str, int]:
    """Return the sha256 (hex) and size of a file."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return digest.hexdigest(), f.tell()


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
        while block := f.read(READ_BLOCK if part_size is None else min(READ_BLOCK, part_size - in_part)):
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
        return ObjectEntry(
            check_object_key(key), size, full.hexdigest(), base64.b64encode(crc.to_bytes(4, "big")).decode(), "CRC32"
        )
    if in_part:
        parts.append(part.digest())
    checksum = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode() + f"-{len(parts)}"
    return ObjectEntry(check_object_key(key), size, full.hexdigest(), checksum, "SHA256")


def stored_matches(head: dict | None, entry: ObjectEntry, *, require_checksum: bool) -> bool:
    """Does the stored object (its HEAD, see client.head_object) match ``entry``? Without a server checksum: only if
    not required."""
    if head is None or head.get("ContentLength") != entry.size:
        return False
    server = head.get(f"Checksum{entry.s3_checksum_algorithm}")
    if server is None:
        return not require_checksum
    return server == entry.s3_checksum
