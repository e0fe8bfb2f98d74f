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
from flip.constants import RunFile

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


_ROUND_MODEL = re.compile(r"global_model_round_([1-9][0-9]{0,6})\.pt")


def round_model_key(round_num: int) -> str:
    """The object key of the global model after 1-based round ``round_num``: ``rounds/global_model_round_<n>.pt``."""
    return f"{RunFile.ROUNDS_DIR}/global_model_round_{round_num}.pt"


def round_of_key(key: str) -> int | None:
    """The 1-based round of a per-round global model's key (round_model_key), else None."""
    folder, _, name = key.partition("/")
    match = _ROUND_MODEL.fullmatch(name) if folder == RunFile.ROUNDS_DIR else None
    return int(match.group(1)) if match else None


def local_model_key(site: str) -> str:
    """The object key of a site's local model of the run's latest round: ``local_models/<site>.pt``."""
    return f"{RunFile.LOCAL_MODELS_DIR}/{check_path_name('site name', site)}.pt"


def site_of_key(key: str) -> str | None:
    """The site of a local model's key (local_model_key), else None."""
    folder, _, name = key.partition("/")
    if folder != RunFile.LOCAL_MODELS_DIR or "/" in name or not name.endswith(".pt"):
        return None
    return name[: -len(".pt")] or None
