"""The FL server as the FL API service sees it: one admin session (NVFlare's FLARE API) and the shapes FLIP's hub
reads.

One :class:`Flare` holds the service's session. Calls are serialised (the admin connection is one conversation);
a call that finds the connection lost reconnects once and is repeated once; any other FLARE failure becomes a
:class:`~flip.errors.FlareError` (HTTP 502) with a short cause, an unknown job an ``ApiError`` 404.

Statuses are FLIP's job-metadata contract: NVFlare's run statuses normalised to ``PENDING``, ``RUNNING``,
``FINISHED``, ``FAILED`` and ``STOPPED`` (:func:`job_status`); a site is as ``check_status client`` reports it
(``no_jobs``, ``no_reply``, ``error`` or its job's status), and one the server lists but that did not answer is
``no_reply``, which FLIP's hub reads as offline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from nvflare.fuel.flare_api.api_spec import JobNotFound, NoClientsAvailable, NoConnection, SessionClosed
from nvflare.fuel.flare_api.flare_api import Session, new_secure_session

from flip.errors import ApiError, FlareError

logger = logging.getLogger("flip.api")
T = TypeVar("T")
#: the longest cause of a FLARE failure passed on (characters)
MAX_CAUSE = 300


class JobStatus(StrEnum):
    """A job's status as FLIP's hub reads it (its job-metadata contract)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"


#: NVFlare's run statuses (nvflare.apis.job_def.RunStatus values) -> the contract's
NATIVE_STATUSES: dict[str, JobStatus] = {
    "SUBMITTED": JobStatus.PENDING,
    "APPROVED": JobStatus.PENDING,
    "DISPATCHED": JobStatus.PENDING,
    "RUNNING": JobStatus.RUNNING,
    "FINISHED:COMPLETED": JobStatus.FINISHED,
    "FINISHED:ABORTED": JobStatus.STOPPED,
    "FINISHED:EXECUTION_EXCEPTION": JobStatus.FAILED,
    "FINISHED:ABNORMAL": JobStatus.FAILED,
    "FINISHED:CAN_NOT_SCHEDULE": JobStatus.FAILED,
    "FINISHED:FAILED_TO_RUN": JobStatus.FAILED,
    "FINISHED:ABANDONED": JobStatus.FAILED,
}
#: a site's status when the server lists it but it did not answer (FLIP's hub: offline)
NO_REPLY = "no_reply"
#: the statuses FLIP's hub reads as a site being offline
OFFLINE = (NO_REPLY, "DISCONNECTED")
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED)


def job_status(native: object) -> JobStatus:
    """Return the contract's status of NVFlare's run status ``native``; an unknown one is ``FAILED`` (logged): never
    shown as an abortable ``RUNNING``."""
    status = NATIVE_STATUSES.get(native.strip().upper()) if isinstance(native, str) else None
    if status is None:
        logger.warning("unknown NVFlare job status %r: reported as FAILED", native)
        return JobStatus.FAILED
    return status


def job_list(jobs: object) -> list[dict[str, str]]:
    """FLIP's ``list_jobs`` items ``{"job_id", "status"}`` from NVFlare's job list (entries without an id skipped)."""
    items = []
    for job in jobs if isinstance(jobs, list) else []:
        if isinstance(job, dict) and isinstance(job.get("job_id"), str) and job["job_id"]:
            items.append({"job_id": job["job_id"], "status": job_status(job.get("status")).value})
    return items


def client_statuses(clients: list[tuple[str, float | None]], rows: object) -> list[dict[str, Any]]:
    """One entry per site the server lists: ``{"name", "last_connect_time", "status"}``.

    Args:
        clients: the server's sites and their last connection time (``check_status server``).
        rows: ``check_status client``'s rows (``client_name``, ``status``; a site running jobs has one per job): the
            first row of a site gives its status; a site without a row is ``no_reply``.
    """
    reported: dict[str, str] = {}
    for row in rows if isinstance(rows, list) else []:
        if isinstance(row, dict) and isinstance(row.get("client_name"), str):
            status = row.get("status")
            reported.setdefault(row["client_name"], status if isinstance(status, str) and status else NO_REPLY)
    return [{"name": name, "last_connect_time": when, "status": reported.get(name, NO_REPLY)} for name, when in clients]


def describe(exc: BaseException) -> str:
    """A short cause of a FLARE failure: its type and the first line of its message (at most 300 characters)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return cause if len(cause) <= MAX_CAUSE else cause[:MAX_CAUSE] + "..."


#: what means the admin connection is gone (reconnect once, repeat the call once)
_LOST = (NoConnection, SessionClosed, ConnectionError)


class Flare:
    """The service's admin session of the FL server.

    Args:
        admin_dir: the admin's startup kit (the folder holding ``startup/fed_admin.json``).
        username: the admin identity the kit was provisioned for.
        connect_timeout: seconds to reach the server when (re)connecting.
        connect: the session factory (NVFlare's ``new_secure_session``).
    """

    def __init__(
        self,
        admin_dir: str | Path,
        username: str,
        connect_timeout: float = 30.0,
        connect: Callable[..., Session] = new_secure_session,
    ):
        self.admin_dir = Path(admin_dir).resolve()
        self.username = username
        self.connect_timeout = connect_timeout
        self._connect = connect
        self._session: Session | None = None
        self._lock = threading.Lock()

    def _open(self) -> Session:
        try:
            session = self._connect(self.username, str(self.admin_dir), timeout=self.connect_timeout)
        except Exception as exc:  # noqa: BLE001 - NVFlare raises many types here; each is reported, typed, as 502
            raise FlareError(
                f"cannot reach the FL server with the admin kit {self.admin_dir.name} as "
                f"{self.username}: {describe(exc)}"
            ) from exc
        logger.info("admin session to the FL server open (%s)", self.username)
        return session

    def connect(self) -> Flare:
        """Open the session now (the service's start).

        Raises:
            FlareError: the server cannot be reached or refused the kit (the short cause).
        """
        with self._lock:
            if self._session is None:
                self._session = self._open()
        return self

    def close(self) -> None:
        """Close the session (the service's end); errors are logged, not raised."""
        with self._lock:
            session, self._session = self._session, None
            if session is not None:
                try:
                    session.close()
                except Exception as exc:  # noqa: BLE001 - closing must not fail the service's shutdown
                    logger.info("closing the admin session: %s", describe(exc))

    @property
    def upload_dir(self) -> Path:
        """The admin kit's transfer folder, where staged job folders wait to be submitted."""
        with self._lock:
            if self._session is None:
                self._session = self._open()
            return Path(self._session.upload_dir).resolve()

    def call(self, what: str, command: Callable[[Session], T]) -> T:
        """Run ``command(session)``; reconnect once and repeat once if the connection was lost.

        Args:
            what: what is being done, for the error (e.g. ``submit_job``).
            command: the FLARE API call.

        Raises:
            ApiError: (404) NVFlare knows no such job.
            FlareError: (502) any other failure of the FL server or of the connection (the short cause).
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._session is None:
                        self._session = self._open()
                    return command(self._session)
                except JobNotFound as exc:
                    raise ApiError(f"{what}: the FL server knows no such job", status=404) from exc
                except _LOST as exc:
                    self._drop()
                    if attempt == 2:
                        raise FlareError(f"{what}: the connection to the FL server was lost: {describe(exc)}") from exc
                    logger.info("%s: the admin connection was lost (%s): reconnecting once", what, describe(exc))
                except FlareError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every FLARE failure is reported, typed, as 502
                    raise FlareError(f"{what}: {describe(exc)}") from exc
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()
            except Exception:  # noqa: BLE001, S110 - the connection is gone already
                pass

    # -- the calls the service makes -------------------------------------------------------------------------
    def sites(self) -> list[tuple[str, float | None]]:
        """The sites connected to the server, with their last connection time."""
        info = self.call("check_status server", lambda s: s.get_system_info())
        return [(c.name, c.last_connect_time) for c in info.client_info]

    def server_status(self) -> dict[str, Any]:
        """``{"status", "start_time"}`` of the server engine (``started``, ``starting``, ``stopping``...)."""
        info = self.call("check_status server", lambda s: s.get_system_info()).server_info
        return {"status": str(info.status), "start_time": info.start_time}

    def client_statuses(self) -> list[dict[str, Any]]:
        """Every connected site's status (:func:`client_statuses`): two admin commands."""
        sites = self.sites()
        if not sites:
            return []

        def rows(session: Session):
            try:
                return session.get_client_job_status()
            except NoClientsAvailable:
                return []

        return client_statuses(sites, self.call("check_status client", rows))
