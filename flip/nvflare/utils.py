"""Small helpers the NVFlare adapters share: context lookups, component lookups, safe reasons, run ids."""

from __future__ import annotations

import re
import traceback
from pathlib import Path
from typing import Any

import nvflare
import torch
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from flip import __version__
from flip.constants import SIMULATOR_JOB_ID
from flip.errors import LookupFailed
from flip.storage.layout import unique_run_id

_MAX_REASON = 300
_SECRETISH = re.compile(r"(?i)(key|secret|token|password|passwd|credential)[^\s,;:=]*\s*[:=]\s*\S+")
#: an absolute file path (``/data/images/<patient>/...``, ``~/...``): not a URL's path, not a relative name
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])~?/[^\s'\"),;]+")


def get_component(fl_ctx: FLContext, comp_id: str, expected: type | tuple[type, ...], role: str) -> Any:
    """Return the component ``comp_id`` if it is an instance of ``expected``.

    Raises:
        LookupFailed: naming the id, what was expected and what was found.
    """
    component = fl_ctx.get_engine().get_component(comp_id)
    names = expected.__name__ if isinstance(expected, type) else " or ".join(t.__name__ for t in expected)
    if component is None:
        raise LookupFailed(f"{role} component {comp_id!r} not found: expected a {names} with that id in the job")
    if not isinstance(component, expected):
        raise LookupFailed(f"{role} component {comp_id!r} is a {type(component).__name__}: expected a {names}")
    return component


def run_dir(fl_ctx: FLContext) -> Path:
    """The run's folder in this site's workspace."""
    return Path(fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id()))


def workspace_root(fl_ctx: FLContext) -> Path:
    return Path(fl_ctx.get_engine().get_workspace().get_root_dir())


def app_custom_dir(fl_ctx: FLContext) -> Path:
    """The job app's custom/ folder at this site (where the user's code lives)."""
    return Path(fl_ctx.get_engine().get_workspace().get_app_custom_dir(fl_ctx.get_job_id()))


def new_run_id(job_id: str) -> str:
    """The job part of the run's S3 key: the NVFlare job id, made unique for the simulator's fixed id."""
    if job_id == SIMULATOR_JOB_ID:
        return unique_run_id(job_id)
    return job_id


def peer_name(fl_ctx: FLContext, default: str | None = "?") -> str | None:
    """The identity name of the site the current message came from, or ``default`` when there is no peer."""
    peer = fl_ctx.get_peer_context()
    return peer.get_identity_name() if peer else default


def mask_secrets(text: str) -> str:
    """``text`` with the value of every ``password=...``-like pair masked (``password=***``)."""
    return _SECRETISH.sub(lambda m: m.group(1) + "=***", text)


def short_reason(text: Any, limit: int = _MAX_REASON) -> str:
    """A one-line reason safe to send off-site: first line only, secrets masked, absolute paths replaced by
    ``<path>`` (a folder or file name can name a patient), bounded length."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else "unknown error"
    line = _ABSOLUTE_PATH.sub("<path>", mask_secrets(line))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def log_site_failure(
    component: FLComponent, fl_ctx: FLContext, what: str, reason: Any, exc: BaseException | None = None
) -> str:
    """Log a failure at a site: ``what: <short reason>`` at error level, the detail at debug level only.

    An error-level line may leave the site (NVFlare can stream a site's error log to the server), so it carries
    only the short reason (:func:`short_reason`, the text the server is told), never the rest of a multi-line
    message, an exception's text or a traceback. ``reason`` in full and ``exc``'s traceback go to debug level
    (the site's local log, when it records debug), secrets masked there too.

    Returns:
        The short reason.
    """
    short = short_reason(reason)
    component.log_error(fl_ctx, f"{what}: {short}")
    detail = str(reason)
    if exc is not None:
        detail += "\n" + "".join(traceback.format_exception(exc))
    component.log_debug(fl_ctx, mask_secrets(f"{what} (detail): {detail}"))
    return short


def software_versions() -> dict[str, str]:
    """flip's, NVFlare's and torch's versions, as recorded with a run's artifacts and report."""
    return {"flip": __version__, "nvflare": nvflare.__version__, "torch": torch.__version__}
