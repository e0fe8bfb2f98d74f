"""Where a run lives in the models bucket: ``<model_id>/<run_id>/<object key>``, ``manifest.json`` among them.

The rules for each part (a model id is a UUID, a run id a safe path name, an object key a safe relative path) live
in flip.checks (check_model_id, check_path_name, check_object_key); this module puts the parts together and picks
run ids that no other upload picks.
"""

from __future__ import annotations

import re
import secrets
import time

from flip.checks import check_model_id, check_path_name

_RUN_STAMP = r"\d{8}T\d{6}Z-[0-9a-f]{6}"


def run_prefix(model_id: str, run_id: str) -> str:
    """Return the S3 prefix of one run: ``<model_id>/<run_id>/`` (both checked)."""
    return f"{check_model_id(model_id)}/{check_path_name('run id', run_id)}/"


def unique_run_id(stem: str) -> str:
    """Return a run id no other upload will pick: ``<stem>-<UTC time stamp>-<6 random hex digits>``."""
    return check_path_name("run id", f"{stem}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}")


def is_unique_run_id_of(stem: str, run_id: str) -> bool:
    """Is ``run_id`` one that ``unique_run_id(stem)`` could have returned?"""
    return isinstance(run_id, str) and re.fullmatch(re.escape(stem) + "-" + _RUN_STAMP, run_id) is not None
