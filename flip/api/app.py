"""The FL API service: the HTTP routes FLIP's hub drives a network with, in front of the FL server.

Routes and bodies are the contract FLIP's hub depends on (``fl_service.py``): ``POST /upload_app/{model_id}``,
``POST /submit_job/{job_folder}``, ``GET /list_jobs``, ``DELETE /abort_job/{job_id}``, ``GET /check_server_status``,
``GET /check_client_status``, and ``GET /health/``. Errors are ``{"detail": "<short reason>"}``: 4xx for bad input
(401 without the key), 404 for an unknown job or job folder, 502 when the FL server fails, 500 (never a
traceback: that stays in the service's log) for anything else.

The key (ours: FLIP's FL API has none) is checked before anything else on every route but ``/health/`` and
``/openapi.json``, in constant time.
"""

from __future__ import annotations

import hmac
import logging
import threading
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from flip.api.bundle import check_urls
from flip.api.flare import ENDED, Flare, JobStatus, job_list, job_status
from flip.api.schemas import (
    ClientInfoModel,
    ErrorModel,
    HealthModel,
    JobMetadata,
    ServerInfoModel,
    UploadAppRequest,
    UploadAppResponse,
)
from flip.api.settings import ServiceConfig
from flip.api.staging import (
    check_job_folder,
    check_older_fields,
    map_trusts,
    stage_job,
    staged_folder,
    trust_names,
)
from flip.checks import check_model_id, check_path_name
from flip.errors import ApiError

logger = logging.getLogger("flip.api")
TITLE = "FLIP FL API (flip on NVFlare)"
HEALTH = "/health/"
#: the routes anyone may call (the health check, the API's description)
OPEN_PATHS = frozenset({HEALTH, "/health", "/openapi.json"})
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorModel, "description": text}
    for code, text in (
        (400, "bad input: the reason names the value and what is allowed"),
        (401, "missing or wrong key"),
        (404, "no such job or job folder"),
        (422, "the request does not have the schema's shape"),
        (502, "the FL server failed or cannot be reached: the short cause"),
    )
}


class KeyCheck:
    """ASGI middleware: every request but to :data:`OPEN_PATHS` must carry ``key`` in ``header`` (compared in
    constant time); otherwise 401, before the route, its path or its body is looked at."""

    def __init__(self, app, key: str, header: str):
        self.app = app
        self.key = key.encode()
        self.header = header
        self.header_name = header.lower().encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        presented = next((value for name, value in scope["headers"] if name == self.header_name), b"")
        if hmac.compare_digest(presented, self.key):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?",))[0]
        logger.warning(
            "refused %s %s from %s: %s key", scope["method"], scope["path"], client, "wrong" if presented else "no"
        )
        response = JSONResponse({"detail": f"missing or wrong {self.header} header"}, status_code=401)
        return await response(scope, receive, send)


def _validation_detail(exc: RequestValidationError) -> str:
    """The fields a request got wrong and why, without the values sent (they may be a project id or a query)."""
    problems = []
    for err in exc.errors()[:5]:
        where = ".".join(str(part) for part in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(problems) or "the request is not valid"


def create_app(config: ServiceConfig, flare: Flare) -> FastAPI:
    """The FL API's FastAPI app over ``flare`` (its admin session, opened at the app's start and closed at its end).

    Args:
        config: the service's configuration (key, bundle sources, trust names).
        flare: the FL server's admin session.
    """
    staging_lock = threading.Lock()
    names = trust_names(config.trust_sites)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        flare.connect()
        try:
            yield
        finally:
            flare.close()

    app = FastAPI(
        title=TITLE,
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        description="FLIP's hub drives the network through these routes. Every route but /health/ and "
        f"/openapi.json needs the key in the {config.key_header} header.",
    )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        logger.info("%s %s: %s %s", request.method, request.url.path, exc.status, exc)
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_detail(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}): see the FL API's log"}, status_code=500)

    @app.get(HEALTH, response_model=HealthModel, tags=["health"])
    def health() -> dict:
        """The service answers (the FL server is not asked)."""
        return {"status": "healthy"}

    @app.post("/upload_app/{model_id}", response_model=UploadAppResponse, responses=_ERRORS, tags=["jobs"])
    def upload_app(model_id: str, body: UploadAppRequest) -> dict:
        """Stage the job of model ``model_id`` from its app bundle with the hub's settings (flip's job builder:
        ``flip job create``'s). The job runs at the trusts' sites, each needed; submit it with
        ``POST /submit_job/{model_id}``."""
        try:
            model_id = check_model_id(model_id)
        except ValueError as exc:
            raise ApiError(str(exc)) from None
        check_older_fields(body)
        files = check_urls(body.bundle_urls, config)
        connected = [name for name, _ in flare.sites()]
        sites = map_trusts(body.trusts, config.trust_sites, connected)
        with staging_lock:
            staged = stage_job(files, flare.upload_dir, model_id, body, sites, config)
        return {
            "message": f"Application uploaded successfully to: {staged.folder}",
            "job_folder": model_id,
            "job_type": staged.job_type,
            "sites": staged.sites,
            "rounds": staged.rounds,
        }

    @app.post("/submit_job/{job_folder}", response_model=str, responses=_ERRORS, tags=["jobs"])
    def submit_job(job_folder: str) -> str:
        """Submit the staged job folder ``job_folder`` (the model id ``upload_app`` staged); answer the job id."""
        job_folder = check_job_folder(job_folder)
        folder = staged_folder(flare.upload_dir, job_folder)
        job_id = flare.call("submit_job", lambda s: s.submit_job(str(folder)))
        logger.info("submitted %s as job %s", job_folder, job_id)
        return job_id

    @app.get("/list_jobs", response_model=list[JobMetadata], responses=_ERRORS, tags=["jobs"])
    def list_jobs(
        detailed: bool = False,
        limit: int | None = Query(default=None, ge=0, le=100_000),
        id_prefix: str | None = Query(default=None, max_length=128),
        name_prefix: str | None = Query(default=None, max_length=128),
        reverse: bool = False,
    ) -> list:
        """Every job and its status: PENDING, RUNNING, FINISHED, FAILED or STOPPED."""
        jobs = flare.call(
            "list_jobs",
            lambda s: s.list_jobs(
                detailed=detailed, limit=limit, id_prefix=id_prefix, name_prefix=name_prefix, reverse=reverse
            ),
        )
        return job_list(jobs)

    @app.delete("/abort_job/{job_id}", response_model=JobMetadata, responses=_ERRORS, tags=["jobs"])
    def abort_job(job_id: str) -> dict:
        """Abort job ``job_id``: ``STOPPED``; a job that has already ended is left as it is and its status
        answered."""
        try:
            check_path_name("job id", job_id)
        except ValueError as exc:
            raise ApiError(str(exc)) from None
        status = job_status(flare.call(f"job {job_id}", lambda s: s.get_job_meta(job_id)).get("status"))
        if status in ENDED:
            return {"job_id": job_id, "status": status}
        flare.call(f"abort job {job_id}", lambda s: s.abort_job(job_id))
        logger.info("aborted job %s (was %s)", job_id, status)
        return {"job_id": job_id, "status": JobStatus.STOPPED}

    @app.get("/check_server_status", response_model=ServerInfoModel, responses=_ERRORS, tags=["status"])
    def check_server_status() -> dict:
        """The FL server engine's status and start time."""
        return flare.server_status()

    @app.get("/check_client_status", response_model=list[ClientInfoModel], responses=_ERRORS, tags=["status"])
    def check_client_status(targets: list[str] | None = Query(default=None, max_length=1000)) -> list:
        """Each site connected to the FL server (or the ``targets``: trust or site names), named as the hub knows
        it; ``no_reply`` is offline."""
        wanted = None if not targets else {config.trust_sites.get(t, t) for t in targets}
        statuses = flare.client_statuses()
        return [
            {**c, "name": names.get(c["name"], c["name"])} for c in statuses if wanted is None or c["name"] in wanted
        ]

    if config.key is not None:
        app.add_middleware(KeyCheck, key=config.key, header=config.key_header)
    app.openapi = lambda: _openapi(app, config)
    return app


def _openapi(app: FastAPI, config: ServiceConfig) -> dict:
    """The OpenAPI description, with the key's header as the security scheme of every protected route."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    if config.key is not None:
        schema.setdefault("components", {})["securitySchemes"] = {
            "ServiceKey": {"type": "apiKey", "in": "header", "name": config.key_header}
        }
        for path, operations in schema.get("paths", {}).items():
            if path not in OPEN_PATHS:
                for operation in operations.values():
                    operation["security"] = [{"ServiceKey": []}]
    app.openapi_schema = schema
    return schema
