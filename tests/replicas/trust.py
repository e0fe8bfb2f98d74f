"""Replicas of a FLIP trust's services for tests: the data-access service (cohort SQL over an OMOP-shaped SQLite
database) and the imaging service (an accession's DICOM files copied into the site's images folder).

Routes, bodies, status codes and ``detail`` texts follow FLIP's trust/data-access-api and trust/imaging-api
(docs/flip-protocol.md names the versions). Both check the trust-internal key (plaintext, constant time; 401
without it, fail closed when unconfigured) and decrypt the hub's project id (AES-256-GCM envelope, tests/replicas/
crypto.py; undecryptable: 500). The data-access replica runs the query for real, read-only: the OMOP database is
attached read-only as schema ``omop``, ``PRAGMA query_only`` is on, an authorizer allows only reads of ``omop``
tables and a few functions, sqlite3 runs a single statement only, and the text must start with SELECT or WITH;
fewer rows than the threshold is 403, as FLIP. The imaging replica's "XNAT" is a folder of DICOM files per
project and accession; a download copies them to ``<images>/<net_id>/<project_id>/<accession_id>/`` (FLIP's newest
layout, with its completeness marker) and answers that path.

Each records what it received (method, path, headers, body) in ``received``, for hygiene checks; ``faults`` makes
it answer 500, a huge body, a dataframe without ``accession_id`` or a path outside its images folder.
"""

import hmac
import re
import shutil
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

from tests.replicas.crypto import decrypt_project_id

TRUST_HEADER = "X-Trust-Internal-Service-Key"
LABEL_CONCEPT = 1147304  # OMOP: image_feature_event_field_concept_id of an observation
MAX_QUERY_LENGTH = 10_240
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FUNCTIONS = {
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "lower",
    "upper",
    "coalesce",
    "abs",
    "round",
    "length",
    "substr",
    "date",
    "cast",
}


@dataclass
class TrustFaults:
    fail: int = 0  # answer 500 to the next N requests
    huge: int = 0  # answer 200 with a body of this many bytes (streamed, no Content-Length) when > 0
    huge_announced: bool = False  # ... with a Content-Length instead
    drop_accession_column: bool = False  # the data-access service leaves accession_id out
    path_outside: str | None = None  # the imaging service answers this path instead
    answer: Any = None  # answer 200 with this JSON instead (when not None)
    raw: bytes | None = None  # answer 200 with these bytes instead (not JSON)


class DataframeQuery(BaseModel):
    encrypted_project_id: str
    query: str


class DownloadImagesRequestData(BaseModel):
    encrypted_central_hub_project_id: str
    accession_id: str


class UploadDataRequest(BaseModel):
    encrypted_central_hub_project_id: str
    accession_id: str
    scan_id: str
    resource_id: str
    files: list[str]
    exist_ok: bool = False


# -- test data --------------------------------------------------------------------------------------------------
def write_omop_db(path: Path, cohort: list[tuple[str, int]]) -> Path:
    """An OMOP-shaped SQLite database: person, image_occurrence (accession_id), observation (the label) and
    image_feature linking each image to its observation. ``cohort`` is (accession_id, label) pairs."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE person (person_id INTEGER PRIMARY KEY, gender_concept_id INTEGER, year_of_birth INTEGER);
        CREATE TABLE image_occurrence (image_occurrence_id INTEGER PRIMARY KEY, person_id INTEGER REFERENCES person,
            accession_id TEXT NOT NULL, image_occurrence_date TEXT, modality_concept_id INTEGER,
            anatomic_site_concept_id INTEGER);
        CREATE TABLE observation (observation_id INTEGER PRIMARY KEY, person_id INTEGER REFERENCES person,
            observation_concept_id INTEGER, value_as_number REAL, observation_date TEXT);
        CREATE TABLE image_feature (image_feature_id INTEGER PRIMARY KEY, person_id INTEGER,
            image_occurrence_id INTEGER REFERENCES image_occurrence, image_feature_concept_id INTEGER,
            image_feature_event_id INTEGER, image_feature_event_field_concept_id INTEGER);
    """)
    for i, (accession, label) in enumerate(cohort, start=1):
        db.execute("INSERT INTO person VALUES (?, ?, ?)", (i, 8507 if i % 2 else 8532, 1950 + i % 50))
        db.execute("INSERT INTO image_occurrence VALUES (?, ?, ?, ?, ?, ?)", (i, i, accession, "2024-01-01", 0, 0))
        db.execute("INSERT INTO observation VALUES (?, ?, ?, ?, ?)", (i, i, 0, float(label), "2024-01-01"))
        db.execute("INSERT INTO image_feature VALUES (?, ?, ?, ?, ?, ?)", (i, i, i, 0, i, LABEL_CONCEPT))
    db.commit()
    db.close()
    return path


#: the cohort query a site's app sends: every image with its label
COHORT_QUERY = (
    "SELECT io.accession_id, CAST(o.value_as_number AS INTEGER) AS label "
    "FROM omop.image_occurrence io "
    "JOIN omop.image_feature f ON f.image_occurrence_id = io.image_occurrence_id "
    f"JOIN omop.observation o ON o.observation_id = f.image_feature_event_id "
    f"WHERE f.image_feature_event_field_concept_id = {LABEL_CONCEPT} ORDER BY io.accession_id"
)


def write_dicom(path: Path, pixels: np.ndarray, accession_id: str) -> Path:
    """A small real DICOM file (pydicom) holding ``pixels`` (uint16, 2-D)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.AccessionNumber = accession_id
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# -- shared: auth, decryption, recording, faults ---------------------------------------------------------------------
class _TrustService:
    def __init__(self, key: str | None, aes_key: str, header: str = TRUST_HEADER):
        self.key, self.aes_key, self.header = key or "", aes_key, header
        self.faults = TrustFaults()
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _app(self, title: str) -> FastAPI:
        service = self
        app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

        @app.middleware("http")
        async def record_and_fault(request: Request, call_next):
            body = await request.body()
            with service._lock:
                service.received.append(
                    {
                        "method": request.method,
                        "path": request.url.path,
                        "query": request.url.query,
                        "headers": dict(request.headers),
                        "body": body,
                    }
                )
                fail = service.faults.fail > 0
                service.faults.fail -= fail
            if fail:
                return JSONResponse({"detail": "Internal Server Error"}, status_code=500)
            if request.url.path != "/health" and service.faults.answer is not None:
                return JSONResponse(service.faults.answer)
            if request.url.path != "/health" and service.faults.raw is not None:
                return Response(service.faults.raw, media_type="application/json")
            if service.faults.huge and request.url.path != "/health":
                size = service.faults.huge
                if service.faults.huge_announced:
                    return Response(b" " * size, media_type="application/json")

                def chunks():
                    sent = 0
                    while sent < size:
                        part = min(1 << 20, size - sent)
                        sent += part
                        yield b" " * part

                return StreamingResponse(chunks(), media_type="application/json")
            return await call_next(request)

        @app.get("/health")
        def health() -> dict:
            return {"status": "ok"}

        return app

    def auth(self):
        key_header = APIKeyHeader(name=self.header, auto_error=False)
        service = self

        def check(key: str | None = Depends(key_header)) -> None:
            if not key:
                raise HTTPException(401, "Not authenticated: trust-internal service key is missing.")
            if not service.key:
                raise HTTPException(401, "Trust-internal service auth not configured.")
            if not hmac.compare_digest(key.encode(), service.key.encode()):
                raise HTTPException(401, "Invalid trust-internal service key.")

        return check

    def project(self, token: str) -> str:
        try:
            return decrypt_project_id(token, self.aes_key)
        except Exception as exc:  # noqa: BLE001 - FLIP lets any decryption failure escape as a 500
            raise RuntimeError("undecryptable project id") from exc


class DataAccessReplica(_TrustService):
    """FLIP's data-access service: ``POST /cohort/dataframe`` runs the query against ``db_path`` (read-only)."""

    def __init__(self, db_path: Path, key: str | None, aes_key: str, header: str = TRUST_HEADER, threshold: int = 10):
        super().__init__(key, aes_key, header)
        self.db_path, self.threshold = Path(db_path), threshold
        self.app = self._build()

    def run_query(self, query: str) -> dict[str, list]:
        """The query's rows, column-oriented; HTTPException as FLIP answers a refused or failing query."""
        if len(query) > MAX_QUERY_LENGTH:
            raise HTTPException(400, f"Query is too long (maximum {MAX_QUERY_LENGTH} characters).")
        text = re.sub(r"--[^\n]*|/\*.*?\*/", " ", query, flags=re.DOTALL).strip()
        if not re.match(r"(?i)(select|with)\b", text):
            raise HTTPException(400, "Only SELECT statements are allowed.")
        denied: list[str] = []

        def authorizer(action, arg1, arg2, db_name, trigger):
            if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_RECURSIVE):
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_READ:
                if (db_name == "omop" and not (arg1 or "").startswith("sqlite_")) or (db_name is None and arg1 is None):
                    return sqlite3.SQLITE_OK
                denied.append(f"Only tables of the omop schema may be read, got {db_name}.{arg1}.")
                return sqlite3.SQLITE_DENY
            if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _FUNCTIONS:
                return sqlite3.SQLITE_OK
            denied.append(
                "Data-modifying statements are not allowed."
                if action in _WRITES
                else f"The query uses something that is not allowed (action {action}, {arg1 or arg2})."
            )
            return sqlite3.SQLITE_DENY

        conn = sqlite3.connect(":memory:", uri=True)
        try:
            conn.execute("ATTACH DATABASE ? AS omop", (f"file:{self.db_path}?mode=ro",))
            conn.execute("PRAGMA query_only = ON")
            conn.set_authorizer(authorizer)
            try:
                cursor = conn.execute(text)
                rows = cursor.fetchall()
            except sqlite3.ProgrammingError as exc:
                raise HTTPException(400, "Query must be exactly one statement.") from exc
            except sqlite3.Warning as exc:
                raise HTTPException(400, "Query must be exactly one statement.") from exc
            except sqlite3.DatabaseError as exc:
                if denied:
                    raise HTTPException(400, denied[0]) from exc
                raise HTTPException(500, "Query execution failed.") from exc
            columns = [d[0] for d in cursor.description or []]
        finally:
            conn.close()
        if len(rows) < self.threshold:
            raise HTTPException(403, "Cohort is too small for row-level data to be released.")
        return {name: [row[i] for row in rows] for i, name in enumerate(columns)}

    def _build(self) -> FastAPI:
        app = self._app("FLIP data-access replica")
        service = self

        @app.post("/cohort/dataframe", dependencies=[Depends(self.auth())])
        def dataframe(body: DataframeQuery) -> dict:
            service.project(body.encrypted_project_id)
            frame = service.run_query(body.query)
            if service.faults.drop_accession_column:
                frame.pop("accession_id", None)
            return frame

        return app


_WRITES = {
    sqlite3.SQLITE_INSERT,
    sqlite3.SQLITE_UPDATE,
    sqlite3.SQLITE_DELETE,
    sqlite3.SQLITE_CREATE_TABLE,
    sqlite3.SQLITE_DROP_TABLE,
    sqlite3.SQLITE_ATTACH,
    sqlite3.SQLITE_DETACH,
    sqlite3.SQLITE_PRAGMA,
    sqlite3.SQLITE_ALTER_TABLE,
    sqlite3.SQLITE_TRANSACTION,
}


class ImagingReplica(_TrustService):
    """FLIP's imaging service: ``POST /download/images/{net_id}`` copies an accession's files from ``store`` (its
    "XNAT": ``<store>/<project_id>/<accession_id>/<RESOURCE>/...``) to ``<images>/<net_id>/<project_id>/<accession_id>``.
    """

    def __init__(self, images: Path, store: Path, key: str | None, aes_key: str, header: str = TRUST_HEADER):
        super().__init__(key, aes_key, header)
        self.images, self.store = Path(images), Path(store)
        self.downloads: list[tuple[str, str, str]] = []  # (net_id, accession_id, resource_type) served
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = self._app("FLIP imaging replica")
        service = self

        @app.post("/download/images/{net_id}", dependencies=[Depends(self.auth())])
        def download(
            net_id: str,
            body: DownloadImagesRequestData,
            assessor_type: str = "scan",
            resource_type: str = "NIFTI",
            force_refresh: bool = False,
        ) -> dict:
            try:
                project = service.project(body.encrypted_central_hub_project_id)
            except RuntimeError as exc:
                raise HTTPException(500, "Failed to decrypt Central Hub Project ID: undecryptable") from exc
            for what, value in (
                ("net_id", net_id),
                ("accession_id", body.accession_id),
                ("resource_type", resource_type),
            ):
                if not _SAFE.fullmatch(value) or value in (".", ".."):
                    raise HTTPException(400, f"Invalid download request: {what} escapes the download folder")
            if assessor_type not in ("scan", "assessor"):
                raise HTTPException(400, "Invalid download request: assessor_type must be scan or assessor")
            source = service.store / project / body.accession_id
            resources = sorted(p.name for p in source.iterdir()) if source.is_dir() else []
            wanted = resources if resource_type == "ALL" else [r for r in resources if r == resource_type]
            if not wanted:
                raise HTTPException(404, "Resource not found: no such project, experiment or resource")
            target = service.images / net_id / project / body.accession_id
            marker = target / f".flip_complete-{assessor_type}-{resource_type}"
            if force_refresh or not marker.is_file():
                try:
                    for resource in wanted:
                        destination = target / f"{assessor_type}s" / "1" / "resources" / resource / "files"
                        shutil.copytree(source / resource, destination, dirs_exist_ok=True)
                    marker.touch()
                except OSError as exc:
                    raise HTTPException(500, f"Trust-side storage error: {type(exc).__name__}") from exc
            service.downloads.append((net_id, body.accession_id, resource_type))
            if service.faults.path_outside is not None:
                return {"path": service.faults.path_outside}
            return {"path": str(target)}

        @app.put("/upload/images/{net_id}", dependencies=[Depends(self.auth())])
        def upload(net_id: str, body: UploadDataRequest) -> list:
            try:
                project = service.project(body.encrypted_central_hub_project_id)
            except RuntimeError as exc:
                raise HTTPException(500, "Failed to decrypt IDs") from exc
            if not _SAFE.fullmatch(net_id):
                raise HTTPException(400, "Invalid upload request")
            root = (service.images / net_id / "upload").resolve()
            urls = []
            for name in body.files:
                local = (root / name).resolve()
                if not local.is_relative_to(root):
                    raise HTTPException(400, "Invalid upload request")
                if not local.is_file():
                    raise HTTPException(500, "Failed to upload files")
                target = service.store / project / body.accession_id / "uploads" / body.scan_id / body.resource_id
                if (target / local.name).exists() and not body.exist_ok:
                    raise HTTPException(500, "Failed to upload files")
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(local, target / local.name)
                urls.append(
                    f"/data/experiments/{body.accession_id}/scans/{body.scan_id}/resources/"
                    f"{body.resource_id}/files/{local.name}?inbody=true"
                )
            return urls

        return app


def write_store(store: Path, project_id: str, cohort: list[tuple[str, np.ndarray]]) -> Path:
    """The imaging replica's "XNAT": one DICOM file per accession under ``<store>/<project>/<accession>/DICOM/``."""
    for accession, pixels in cohort:
        write_dicom(store / project_id / accession / "DICOM" / f"{accession}.dcm", pixels, accession)
    return store
