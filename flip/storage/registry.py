"""The model registry: models by id, their runs and artifacts, read from the S3 layout only.

``s3://<bucket>/<model_id>/<run_id>/`` with ``manifest.json`` written last: a run is *verified* iff its manifest
exists and every object matches it, and only verified runs are ever served. Artifacts load safely:
``torch.load(..., weights_only=True)`` for a state dict, ``torch.jit.load`` for a TorchScript archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from flip.checks import check_bucket_name, check_model_id, check_object_key, check_path_name
from flip.constants import RunFile
from flip.errors import RegistryError, VerificationError
from flip.storage.client import make_s3_client, s3_errors
from flip.storage.layout import run_prefix, unique_run_id
from flip.storage.manifest import check_manifest, read_manifest, verify_run
from flip.storage.upload import upload_run

__all__ = ["ModelRegistry", "RegistryError", "RunRecord", "is_torchscript", "load_model_file"]


@dataclass
class RunRecord:
    """One run of a model, as the registry sees it."""

    model_id: str
    run_id: str
    verified: bool
    problem: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def created(self) -> str:
        created = self.manifest.get("created", "")
        return created if isinstance(created, str) else ""

    @property
    def size(self) -> int:
        return sum(o["size"] for o in self.manifest.get("objects", []))

    @property
    def keys(self) -> list[str]:
        return [o["key"] for o in self.manifest.get("objects", [])]


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a ``torch.save`` file has none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_model_file(path: str | Path) -> Any:
    """Load a model artifact without running pickled code: a state dict (weights_only) or TorchScript.

    Raises:
        RegistryError: the file is neither (e.g. a pickle that needs arbitrary code to load).
    """
    path = Path(path)
    if is_torchscript(path):
        return torch.jit.load(str(path), map_location="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a file it refuses to load safely
        raise RegistryError(f"{path.name} is neither a weights-only torch.save file nor TorchScript") from exc


class ModelRegistry:
    """Models in the models bucket (Python API behind ``flip models``).

    Args:
        client: an S3 client (default: boto3's chain, see flip.storage.client.make_s3_client).
        bucket: the models bucket (default: FLIP_MODELS_BUCKET).
    """

    def __init__(self, client=None, bucket: str | None = None):
        from flip.settings import load_settings

        self.client = client or make_s3_client()
        self.bucket = check_bucket_name(bucket) if bucket else load_settings().models_bucket

    def _pages(self, prefix: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield every ``list_objects_v2`` page under ``prefix`` (boto3's paginator follows the continuation)."""
        yield from self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, **kwargs)

    def _prefixes(self, prefix: str) -> list[str]:
        with s3_errors(f"cannot list s3://{self.bucket}/{prefix}"):
            return [p["Prefix"][len(prefix):].rstrip("/")
                    for page in self._pages(prefix, Delimiter="/") for p in page.get("CommonPrefixes", [])]

    def model_ids(self) -> list[str]:
        """Every model id that has objects in the bucket."""
        ids = []
        for name in self._prefixes(""):
            try:
                model_id = check_model_id(name)
            except ValueError:
                continue  # not ours: the bucket may hold other things
            if self._has_objects(f"{model_id}/"):
                ids.append(model_id)
        return sorted(ids)

    def runs(self, model_id: str) -> list[RunRecord]:
        """The model's runs, oldest first, each verified against its manifest."""
        model_id = check_model_id(model_id)
        records = []
        for run_id in self._prefixes(f"{model_id}/"):
            try:
                check_path_name("run id", run_id)
            except ValueError:
                continue
            prefix = run_prefix(model_id, run_id)
            manifest = None
            try:  # the manifest is read once: verified against, or shown as the partial run's
                manifest = read_manifest(self.client, self.bucket, prefix)
                if manifest is None and not self._has_objects(prefix):
                    continue  # an empty folder left by a removal: not a run
                verify_run(self.client, self.bucket, prefix, manifest)
                records.append(RunRecord(model_id, run_id, True, manifest=manifest))
            except VerificationError as exc:  # no manifest, a malformed one, or objects that differ
                records.append(RunRecord(model_id, run_id, False, problem=str(exc),
                                         manifest=self._shown(manifest, prefix)))
        return sorted(records, key=lambda r: (r.created, r.run_id))

    def _shown(self, manifest: Any, prefix: str) -> dict[str, Any]:
        """What an unverified run shows of its manifest: all of it if it is well formed, else nothing."""
        try:
            return check_manifest(manifest, prefix, prefix) if manifest is not None else {}
        except VerificationError:
            return {}

    def _has_objects(self, prefix: str) -> bool:
        with s3_errors(f"cannot list s3://{self.bucket}/{prefix}"):
            return self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0) > 0

    def run(self, model_id: str, run_id: str | None = None, artifact: str | None = None) -> RunRecord:
        """The given run, or the latest verified one (holding ``artifact``, if given). Unverified runs are never
        served.

        Raises:
            RegistryError: no such model or run, or the run does not verify.
        """
        records = self.runs(model_id)
        if not records:
            raise RegistryError(f"model {model_id} has no runs in s3://{self.bucket}")
        if run_id is None:
            verified = [r for r in records if r.verified and (artifact is None or artifact in r.keys)]
            if not verified:
                what = f"verified run with {artifact}" if artifact else "verified run"
                raise RegistryError(f"model {model_id} has no {what} ({len(records)} runs in all)")
            return verified[-1]
        for record in records:
            if record.run_id == run_id:
                if not record.verified:
                    raise RegistryError(f"run {run_id} of model {model_id} is not served: {record.problem}")
                return record
        raise RegistryError(f"model {model_id} has no run {run_id!r} (runs: {', '.join(r.run_id for r in records)})")

    def metrics(self, record: RunRecord) -> dict[str, Any]:
        """The run's metrics.json (empty if it has none)."""
        if RunFile.METRICS not in record.keys:
            return {}
        return json.loads(self._get(record, RunFile.METRICS))

    def _get(self, record: RunRecord, key: str) -> bytes:
        with s3_errors(f"cannot read {key} of run {record.run_id}"):
            body = self.client.get_object(Bucket=self.bucket, Key=f"{record.model_id}/{record.run_id}/{key}")
            return body["Body"].read()

    def show(self, model_id: str) -> dict[str, Any]:
        """Runs (verified or not), rounds, sites, the final metrics and sizes of a model."""
        runs = []
        for record in self.runs(model_id):
            entry = {"run_id": record.run_id, "verified": record.verified, "created": record.created,
                     "rounds": record.manifest.get("rounds"), "sites": record.manifest.get("sites"),
                     "bytes": record.size, "artifacts": record.keys}
            if record.verified:
                rounds = self.metrics(record).get("rounds") or []
                entry["final_metrics"] = rounds[-1].get("global", {}) if rounds else {}
            else:
                entry["problem"] = record.problem
            runs.append(entry)
        if not runs:
            raise RegistryError(f"model {model_id} has no runs in s3://{self.bucket}")
        return {"model_id": check_model_id(model_id), "bucket": self.bucket, "runs": runs}

    def download(self, model_id: str, run_id: str | None = None, out: str | Path | None = None,
                 artifact: str = RunFile.GLOBAL_MODEL) -> Path:
        """Download an artifact of a verified run (default: the latest), check its sha256 and that it loads.

        Returns:
            The written file: ``out``, or ``out/<artifact's file name>`` when ``out`` is an existing folder; default
            ``<model_id>-<run_id>-<artifact's file name>`` in the current folder.
        """
        record = self.run(model_id, run_id, artifact)
        out = Path(out) if out else None
        if out is not None and out.is_dir():
            out = out / Path(artifact).name
        return self._download(record, artifact, out)[0]

    def _download(self, record: RunRecord, artifact: str, out: Path | None) -> tuple[Path, Any]:
        """``download`` for a run already chosen: sha256 against its manifest, and a .pt file must load safely.

        Returns:
            The written file, and what it loaded as (None for a file other than .pt).
        """
        entry = next((o for o in record.manifest["objects"] if o["key"] == check_object_key(artifact)), None)
        if entry is None:
            raise RegistryError(f"run {record.run_id} has no {artifact} (it has {', '.join(record.keys)})")
        target = out or Path(f"{record.model_id}-{record.run_id}-{Path(artifact).name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".download-")
        done = False
        try:  # the temporary file goes on any failure: a failed read, a sha256 mismatch, a model that will not load
            with os.fdopen(fd, "wb") as f:
                data = self._get(record, artifact)
                f.write(data)
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise RegistryError(f"{artifact} of run {record.run_id} does not match its manifest sha256")
            loaded = load_model_file(tmp) if artifact.endswith(".pt") else None
            os.replace(tmp, target)
            done = True
        finally:
            if not done:
                Path(tmp).unlink(missing_ok=True)
        return target, loaded

    def download_report(self, model_id: str, run_id: str | None = None, folder: str | Path = RunFile.REPORT_DIR) -> Path:
        """Download the run report (``report/index.html`` and its images) of a verified run into ``folder``."""
        record = self.run(model_id, run_id, RunFile.REPORT_INDEX)
        folder = Path(folder)
        for key in record.keys:
            if key.startswith(f"{RunFile.REPORT_DIR}/"):
                self._download(record, key, folder / Path(key).relative_to(RunFile.REPORT_DIR))
        return folder / Path(RunFile.REPORT_INDEX).name

    def load(self, model_id: str, run_id: str | None = None) -> Any:
        """The global model of a verified run: a state dict, or a TorchScript module."""
        return self.load_run(self.run(model_id, run_id, RunFile.GLOBAL_MODEL))

    def load_run(self, record: RunRecord) -> Any:
        """The global model of a run already chosen with ``run``."""
        with tempfile.TemporaryDirectory() as tmp:
            return self._download(record, RunFile.GLOBAL_MODEL, Path(tmp) / RunFile.GLOBAL_MODEL)[1]

    def upload(self, model_id: str, model_file: str | Path, run_id: str | None = None) -> dict[str, Any]:
        """Register a model file (a weights-only torch.save state or a TorchScript archive) as a new verified run.

        Args:
            model_id: the model's UUID.
            model_file: the file to register.
            run_id: the new run's id; default ``upload-<UTC time stamp>-<random hex>`` (unique).

        Raises:
            RegistryError: the file cannot be loaded safely, or the run already exists (a run is never replaced).
            StorageError: the upload failed.
        """
        model_file = Path(model_file)
        load_model_file(model_file)  # refuse what cannot be loaded safely
        run_id = run_id or unique_run_id("upload")
        prefix = run_prefix(model_id, run_id)
        try:
            existing = read_manifest(self.client, self.bucket, prefix) is not None
        except VerificationError:  # a manifest that is not JSON is still someone's
            existing = True
        if existing:
            raise RegistryError(f"run {run_id} of model {model_id} already exists in s3://{self.bucket}/{prefix}: "
                                f"a run is never replaced, choose another run id")
        upload_run(self.client, self.bucket, prefix, {RunFile.GLOBAL_MODEL: model_file},
                      {"model_id": check_model_id(model_id), "run_id": run_id, "source": "upload",
                       "format": "torchscript" if is_torchscript(model_file) else "state_dict"})
        return verify_run(self.client, self.bucket, prefix)

    def remove(self, model_id: str) -> int:
        """Delete every object of the model (manifests first, so no run looks complete meanwhile)."""
        model_id = check_model_id(model_id)
        with s3_errors(f"cannot remove model {model_id}"):
            keys = [o["Key"] for page in self._pages(f"{model_id}/") for o in page.get("Contents", [])]
            if not keys:
                raise RegistryError(f"model {model_id} has no objects in s3://{self.bucket}")
            keys.sort(key=lambda k: not k.endswith("/" + RunFile.MANIFEST))
            for key in keys:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)
