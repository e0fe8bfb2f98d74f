"""A replica of FLIP's hub (flip-api) for tests: the internal routes the FL server calls, the user routes
``flip status`` reads, and the results listing, on FastAPI, storing everything in SQLite.

Routes, bodies, status codes and ``detail`` texts follow FLIP's newest flip-api (docs/flip-protocol.md names the
versions): every route under ``/api``; internal routes check the internal service key (SHA-256 of the header's value
against a configured hash, constant time; 401 without it, before path or body are validated); an unknown model is
404 on a status, 400 on metrics (its trust is not on the model), 500 on logs (a foreign-key violation, as FLIP);
a bad body is 422 (FastAPI's own). What is the replica's own: user routes check one configured bearer token (FLIP
verifies a Cognito/OIDC JWT and MFA), the log sentences and event renderings are the replica's words, and
``requests`` / ``status_history`` tables record what arrived (FLIP keeps the current status only).

Faults for client tests (:class:`Faults`): answer 500 to the next N requests, sleep before answering, handle then
answer late, answer every request with a redirect, answer 500 to chosen statuses.
"""

import asyncio
import hashlib
import hmac
import json
import math
import sqlite3
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, field_validator, model_validator

API = "/api"


class ModelStatus(str, Enum):
    """FLIP's hub ModelStatus, newest names and order (RUNNING was TRAINING_STARTED)."""

    ERROR = "ERROR"
    STOPPED = "STOPPED"
    PENDING = "PENDING"
    INITIATED = "INITIATED"
    PREPARED = "PREPARED"
    RUNNING = "RUNNING"
    RESULTS_UPLOADED = "RESULTS_UPLOADED"
    RESULTS_UPLOAD_FAILED = "RESULTS_UPLOAD_FAILED"


_IGNORED_AFTER_STOPPED = {"PREPARED", "RUNNING", "ERROR", "RESULTS_UPLOADED", "RESULTS_UPLOAD_FAILED"}
_AUDITED = {"PREPARED", "RUNNING", "RESULTS_UPLOADED"}
_FAILED = {"ERROR", "STOPPED", "RESULTS_UPLOAD_FAILED"}
# the replica's own sentences for the model-level log row a status change writes
_SENTENCES = {
    "ERROR": "The model's job failed.",
    "STOPPED": "The model's job was stopped.",
    "INITIATED": "The model left the queue and is being set up.",
    "PREPARED": "The model's job is ready to start.",
    "RUNNING": "The model's job is running.",
    "RESULTS_UPLOADED": "The model's results are ready to download.",
    "RESULTS_UPLOAD_FAILED": "The model's job finished but its results could not be uploaded.",
}


class TrainingMetrics(BaseModel):
    fl_client_name: str
    global_round: int = Field(ge=0)
    label: str
    result: float
    x_value: float | None = None
    x_label: str = "Global Round"

    @model_validator(mode="before")
    @classmethod
    def _x_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("x_value") is None and "global_round" in data:
            data = {**data, "x_value": data["global_round"]}
        return data

    @field_validator("x_value")
    @classmethod
    def _finite_x(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("x_value must be finite")
        return value


class TrainingLog(BaseModel):
    fl_client_name: str | None = None
    log: str | None = None
    event_type: str | None = Field(default=None, max_length=64)
    global_round: int | None = Field(default=None, ge=1, le=2147483647)
    details: dict[str, Any] | None = None
    success: bool = True

    @model_validator(mode="after")
    def _one_of(self) -> "TrainingLog":
        if (self.log is None) == (self.event_type is None):
            raise ValueError("exactly one of 'log' and 'event_type' must be set")
        if self.event_type is not None and not self.event_type.strip():
            raise ValueError("event_type must not be blank")
        if self.event_type is not None and self.global_round is None:
            raise ValueError("global_round is required with event_type")
        return self


@dataclass
class Faults:
    fail: int = 0  # answer 500 to the next N requests (without handling them)
    slow: float = 0.0  # seconds before handling each request
    late: int = 0  # handle the next N requests, then wait late_delay before answering
    late_delay: float = 1.0
    redirect: tuple[int, str] | None = None  # (3xx, Location) for every request
    reject_status: set[str] = field(default_factory=set)  # PUT of these statuses answered 500


_SCHEMA = """
PRAGMA foreign_keys = ON;
CREATE TABLE IF NOT EXISTS trust (id TEXT PRIMARY KEY, name TEXT NOT NULL, code TEXT);
CREATE TABLE IF NOT EXISTS fl_kit_slot (slot_name TEXT PRIMARY KEY, assigned_to_trust_id TEXT REFERENCES trust(id));
CREATE TABLE IF NOT EXISTS model (id TEXT PRIMARY KEY, name TEXT NOT NULL, description TEXT NOT NULL DEFAULT '',
    project_id TEXT NOT NULL, status TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0, creation_timestamp TEXT);
CREATE TABLE IF NOT EXISTS model_trust_intersect (model_id TEXT REFERENCES model(id), trust_id TEXT REFERENCES trust(id),
    PRIMARY KEY (model_id, trust_id));
CREATE TABLE IF NOT EXISTS models_audit (id INTEGER PRIMARY KEY, model_id TEXT REFERENCES model(id), action TEXT,
    audit_date TEXT);
CREATE TABLE IF NOT EXISTS fl_metrics (id INTEGER PRIMARY KEY, trust TEXT REFERENCES trust(id), fl_client_name TEXT,
    model_id TEXT NOT NULL REFERENCES model(id), global_round INTEGER, x_value REAL, x_label TEXT, timestamp TEXT,
    label TEXT, result REAL);
CREATE TABLE IF NOT EXISTS fl_logs (seq INTEGER PRIMARY KEY, id TEXT UNIQUE, model_id TEXT NOT NULL REFERENCES model(id),
    log_date TEXT, success INTEGER, trust TEXT REFERENCES trust(id), fl_client_name TEXT, log TEXT, event_type TEXT,
    global_round INTEGER, details TEXT);
CREATE TABLE IF NOT EXISTS status_history (seq INTEGER PRIMARY KEY, model_id TEXT, status TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS requests (seq INTEGER PRIMARY KEY, method TEXT, path TEXT, headers TEXT, body BLOB, at TEXT);
"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class HubReplica:
    """The hub replica: ``app`` (FastAPI), its SQLite database at ``db_path``, and what tests need to set it up.

    Args:
        db_path: the SQLite file.
        internal_key: the internal service key the FL server holds (the replica stores only its SHA-256).
        header: the internal key's header (``INTERNAL_SERVICE_KEY_HEADER``).
        user_token: the bearer token the user routes accept.
        s3: for the results listing: ``{"bucket_url": "s3://<bucket>", "endpoint": ..., "key": ..., "secret": ...}``.
    """

    def __init__(
        self,
        db_path: Path,
        internal_key: str | None,
        header: str = "X-Internal-Service-Key",
        user_token: str = "user-token",
        s3: dict | None = None,
    ):
        self.db_path = Path(db_path)
        self.key_hash = hashlib.sha256(internal_key.encode()).hexdigest() if internal_key else ""
        self.header = header
        self.user_token = user_token
        self.s3 = s3
        self.faults = Faults()
        self._lock = threading.Lock()
        with self.db() as db:
            db.executescript(_SCHEMA)
        self.app = self._build()

    # -- the database ---------------------------------------------------------------------------------------
    def db(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, timeout=10, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def query(self, sql: str, *args) -> list[dict]:
        with self.db() as db:
            return [dict(r) for r in db.execute(sql, args).fetchall()]

    def add_trust(self, name: str, slot_name: str, code: str | None = None) -> str:
        trust_id = str(uuid.uuid4())
        with self._lock, self.db() as db:
            db.execute("INSERT INTO trust (id, name, code) VALUES (?, ?, ?)", (trust_id, name, code))
            db.execute("INSERT INTO fl_kit_slot (slot_name, assigned_to_trust_id) VALUES (?, ?)", (slot_name, trust_id))
        return trust_id

    def add_model(self, model_id: str, trust_ids: list[str], name: str = "model", status: str = "PENDING") -> None:
        with self._lock, self.db() as db:
            db.execute(
                "INSERT INTO model (id, name, project_id, status, creation_timestamp) VALUES (?, ?, ?, ?, ?)",
                (model_id, name, str(uuid.uuid4()), status, _now()),
            )
            for trust_id in trust_ids:
                db.execute("INSERT INTO model_trust_intersect (model_id, trust_id) VALUES (?, ?)", (model_id, trust_id))

    def statuses(self, model_id: str) -> list[str]:
        return [
            r["status"]
            for r in self.query("SELECT status FROM status_history WHERE model_id = ? ORDER BY seq", model_id)
        ]

    def metrics(self, model_id: str) -> list[dict]:
        return self.query("SELECT * FROM fl_metrics WHERE model_id = ? ORDER BY id", model_id)

    def logs(self, model_id: str) -> list[dict]:
        rows = self.query("SELECT * FROM fl_logs WHERE model_id = ? ORDER BY seq", model_id)
        for r in rows:
            r["details"] = json.loads(r["details"]) if r["details"] else None
        return rows

    def requests(self) -> list[dict]:
        return self.query("SELECT * FROM requests ORDER BY seq")

    def _resolve(self, db: sqlite3.Connection, model_id: str, client: str) -> tuple[str | None, str | None]:
        """(trust id, None) or (None, FLIP's reason it cannot be attributed)."""
        row = db.execute(
            "SELECT t.id, t.name FROM fl_kit_slot s JOIN trust t ON t.id = s.assigned_to_trust_id "
            "WHERE s.slot_name = ?",
            (client,),
        ).fetchone()
        if row is None:
            return None, f"FL client '{client}' could not be resolved to a trust (model: {model_id})"
        on_model = db.execute(
            "SELECT 1 FROM model_trust_intersect WHERE model_id = ? AND trust_id = ?", (model_id, row["id"])
        ).fetchone()
        if on_model is None:
            return None, f"The trust: {row['name']} is not associated with model: {model_id}"
        return row["id"], None

    def _add_log(
        self,
        db,
        model_id: str,
        text: str | None,
        success: bool,
        trust: str | None = None,
        client: str | None = None,
        event: str | None = None,
        round_: int | None = None,
        details: dict | None = None,
    ) -> None:
        db.execute(
            "INSERT INTO fl_logs (id, model_id, log_date, success, trust, fl_client_name, log, event_type, "
            "global_round, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                str(uuid.uuid4()),
                model_id,
                _now(),
                int(success),
                trust,
                client,
                text,
                event,
                round_,
                json.dumps(details) if details is not None else None,
            ),
        )

    # -- the app --------------------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        hub = self
        app = FastAPI(title="FLIP hub replica", docs_url=None, redoc_url=None, openapi_url=None)
        key_header = APIKeyHeader(name=self.header, auto_error=False)
        bearer = HTTPBearer()

        @app.middleware("http")
        async def record_and_fault(request: Request, call_next):
            body = await request.body()
            with hub.db() as db:
                db.execute(
                    "INSERT INTO requests (method, path, headers, body, at) VALUES (?, ?, ?, ?, ?)",
                    (request.method, request.url.path, json.dumps(dict(request.headers)), body, _now()),
                )
            faults = hub.faults
            with hub._lock:
                fail = faults.fail > 0
                faults.fail -= fail
                late = faults.late > 0
                faults.late -= late
            if faults.slow:
                await asyncio.sleep(faults.slow)
            if faults.redirect:
                code, location = faults.redirect
                return Response(status_code=code, headers={"Location": location})
            if fail:
                return JSONResponse({"detail": "try again"}, status_code=500)
            reply = await call_next(request)
            if late:
                await asyncio.sleep(faults.late_delay)
            return reply

        def internal(key: str | None = Depends(key_header)) -> None:
            if not key:
                raise HTTPException(401, "Not authenticated: internal service key is missing.")
            if not hub.key_hash:
                raise HTTPException(401, "Internal service auth not configured.")
            if not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), hub.key_hash):
                raise HTTPException(401, "Invalid internal service key.")

        def user(credentials: HTTPAuthorizationCredentials = Depends(bearer)) -> None:
            if not hmac.compare_digest(credentials.credentials, hub.user_token):
                raise HTTPException(401, "Invalid token.")

        @app.get(f"{API}/health")
        def health() -> dict:
            return {"status": "ok", "message": "flip is running"}

        @app.put(f"{API}/model/{{model_id}}/status/{{model_status}}", dependencies=[Depends(internal)])
        def put_status(model_id: uuid.UUID, model_status: ModelStatus = PathParam(...)) -> dict:
            new = model_status.value
            if new in hub.faults.reject_status:
                raise HTTPException(500, "Unexpected error while updating model status: unavailable")
            with hub._lock, hub.db() as db:
                row = db.execute("SELECT status FROM model WHERE id = ?", (str(model_id),)).fetchone()
                if row is None:
                    raise HTTPException(404, f"Model ID: {model_id} does not exist")
                if row["status"] == "STOPPED" and new in _IGNORED_AFTER_STOPPED:
                    return {"success": "status set"}
                changed = row["status"] != new
                db.execute("UPDATE model SET status = ? WHERE id = ?", (new, str(model_id)))
                db.execute(
                    "INSERT INTO status_history (model_id, status, at) VALUES (?, ?, ?)", (str(model_id), new, _now())
                )
                if changed and new in _AUDITED:
                    db.execute(
                        "INSERT INTO models_audit (model_id, action, audit_date) VALUES (?, ?, ?)",
                        (str(model_id), new, _now()),
                    )
                if new in _SENTENCES:  # FLIP writes no sentence for PENDING
                    hub._add_log(db, str(model_id), _SENTENCES[new], success=new not in _FAILED)
            return {"success": "status set"}

        @app.post(f"{API}/model/{{model_id}}/metrics", status_code=204, dependencies=[Depends(internal)])
        def post_metrics(model_id: uuid.UUID, body: TrainingMetrics) -> Response:
            with hub._lock, hub.db() as db:
                trust, why = hub._resolve(db, str(model_id), body.fl_client_name)
                if trust is None:
                    raise HTTPException(400, why)
                db.execute(
                    "INSERT INTO fl_metrics (trust, fl_client_name, model_id, global_round, x_value, x_label, "
                    "timestamp, label, result) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        trust,
                        body.fl_client_name,
                        str(model_id),
                        body.global_round,
                        body.x_value,
                        body.x_label,
                        _now(),
                        body.label,
                        body.result,
                    ),
                )
            return Response(status_code=204)

        @app.post(f"{API}/model/{{model_id}}/logs", dependencies=[Depends(internal)])
        def post_logs(model_id: uuid.UUID, body: TrainingLog) -> dict:
            try:
                with hub._lock, hub.db() as db:
                    trust, text = None, body.log
                    if body.fl_client_name is not None:
                        trust, why = hub._resolve(db, str(model_id), body.fl_client_name)
                        if trust is None:
                            if body.log is not None and not body.success:
                                text = f"[unattributed client '{body.fl_client_name}' — {why}] {body.log}"
                            else:
                                raise HTTPException(400, why)
                    hub._add_log(
                        db,
                        str(model_id),
                        text,
                        body.success,
                        trust,
                        body.fl_client_name,
                        body.event_type,
                        body.global_round,
                        body.details,
                    )
            except sqlite3.IntegrityError:
                raise HTTPException(500, "An internal server error occurred while adding the log.") from None
            return {"detail": "Created"}

        # -- user routes (flip status) -----------------------------------------------------------------------
        def model_row(db, model_id: uuid.UUID):
            row = db.execute("SELECT * FROM model WHERE id = ? AND deleted = 0", (str(model_id),)).fetchone()
            if row is None:
                raise HTTPException(404, f"Model ID: {model_id} does not exist")
            return row

        @app.post(f"{API}/step/model/{{model_id}}", dependencies=[Depends(user)])
        def retrieve_model(model_id: uuid.UUID) -> dict:
            with hub.db() as db:
                row = model_row(db, model_id)
                dates = {
                    a["action"]: a["d"]
                    for a in db.execute(
                        "SELECT action, MAX(audit_date) AS d FROM models_audit WHERE model_id = ? GROUP BY action",
                        (str(model_id),),
                    )
                }
            return {
                "modelId": row["id"],
                "modelName": row["name"],
                "modelDescription": row["description"],
                "projectId": row["project_id"],
                "status": row["status"],
                "query": None,
                "files": [],
                "creationTimestamp": row["creation_timestamp"],
                "preparedAt": dates.get("PREPARED"),
                "trainingStartedAt": dates.get("RUNNING"),
                "resultsUploadedAt": dates.get("RESULTS_UPLOADED"),
            }

        @app.get(f"{API}/model/{{model_id}}/metrics", dependencies=[Depends(user)])
        def get_metrics(model_id: uuid.UUID) -> list:
            with hub.db() as db:
                model_row(db, model_id)
                rows = db.execute(
                    "SELECT m.*, t.name AS trust_name, t.code AS trust_code FROM fl_metrics m "
                    "LEFT JOIN trust t ON t.id = m.trust WHERE m.model_id = ? ORDER BY m.id",
                    (str(model_id),),
                ).fetchall()
            charts: dict[tuple, dict[str, list]] = {}
            for r in rows:
                series = charts.setdefault((r["label"], r["x_label"]), {})
                series.setdefault(r["trust_code"] or r["trust_name"] or "?", []).append(
                    {"xValue": r["x_value"], "yValue": r["result"]}
                )
            return [
                {
                    "yLabel": label,
                    "xLabel": x_label,
                    "metrics": [
                        {"seriesLabel": name, "data": sorted(points, key=lambda p: p["xValue"])}
                        for name, points in series.items()
                    ],
                }
                for (label, x_label), series in charts.items()
            ]

        @app.get(f"{API}/model/{{model_id}}/logs", dependencies=[Depends(user)])
        def get_logs(model_id: uuid.UUID) -> list:
            with hub.db() as db:
                model_row(db, model_id)
                rows = db.execute(
                    "SELECT l.*, t.name AS trust_name, t.code AS trust_code FROM fl_logs l "
                    "LEFT JOIN trust t ON t.id = l.trust WHERE l.model_id = ? ORDER BY l.seq",
                    (str(model_id),),
                ).fetchall()
            return [
                {
                    "id": r["id"],
                    "modelId": r["model_id"],
                    "logDate": r["log_date"],
                    "success": bool(r["success"]),
                    "trustName": r["trust_name"],
                    "trustCode": r["trust_code"],
                    "globalRound": r["global_round"],
                    "log": r["log"] if r["log"] is not None else _render(r),
                }
                for r in rows
            ]

        @app.get(f"{API}/files/model/{{model_id}}/fl/results", dependencies=[Depends(user)])
        def fl_results(model_id: uuid.UUID) -> list:
            with hub.db() as db:
                model_row(db, model_id)
            if not hub.s3:
                raise HTTPException(500, "An error occurred when finding the result data")
            import boto3

            bucket, _, prefix = hub.s3["bucket_url"][len("s3://") :].partition("/")
            key_prefix = "/".join(p for p in (prefix.strip("/"), str(model_id)) if p)
            client = boto3.client(
                "s3",
                endpoint_url=hub.s3["endpoint"],
                aws_access_key_id=hub.s3["key"],
                aws_secret_access_key=hub.s3["secret"],
                region_name="us-east-1",
            )
            listed = client.list_objects_v2(Bucket=bucket, Prefix=key_prefix)
            return [
                client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": o["Key"]}, ExpiresIn=3600)
                for o in listed.get("Contents", [])
            ]

        return app


def _render(row) -> str:
    """The replica's text for a typed event row."""
    details = json.loads(row["details"]) if row["details"] else {}
    who = row["trust_name"] or row["fl_client_name"] or "hub"
    if row["event_type"] == "ROUND_STARTED":
        total = f"/{details['total_rounds']}" if details.get("total_rounds") else ""
        return f"Round {row['global_round']}{total} started"
    if row["event_type"] == "CLIENT_RESULT_RECEIVED":
        return f"Round {row['global_round']}: result received from {who}"
    if row["event_type"] == "ROUND_AGGREGATED":
        got = f": {details.get('returned')} of {details.get('expected')} returned" if details else ""
        return f"Round {row['global_round']} aggregated{got}"
    return f"{row['event_type']} (round {row['global_round']})"
