"""The model registry: models by id, their runs and artifacts, read from the S3 layout only.

``s3://<bucket>/<model_id>/<run_id>/`` with ``manifest.json`` written last: a run is *verified* iff its manifest
exists and every object matches it, and only verified runs are ever served. Artifacts load safely:
``torch.load(..., weights_only=True)`` for a state dict, ``torch.jit.load`` for a TorchScript archive.

The DLR demonstrator's registry operations, each on this layout: upload a model to start from (with a name,
description, owner and optionally a preprocessing model, as a run of its own), list, show (metadata), metrics per
round and reporter, per-round global models and the latest round's local models (when the job kept them), the
preprocessing model, remove (the owner recorded in the manifests checked). A model's name, description and owner are
those of its latest run that records them (an upload records them; a training run started from a registry model
carries the initial model's forward).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flip.checks import check_bucket_name, check_model_id, check_object_key, check_path_name, check_str
from flip.constants import RunFile
from flip.errors import RegistryError, VerificationError
from flip.storage.client import make_s3_client, s3_errors
from flip.storage.layout import round_of_key, run_prefix, site_of_key, unique_run_id
from flip.storage.manifest import check_manifest, read_manifest, verify_run
from flip.storage.model_files import (
    check_input_shape,
    check_model_file,
    check_preprocessing_file,
    is_torchscript,
    load_model_file,
    load_models_module,
)
from flip.storage.upload import upload_run

__all__ = ["ModelRegistry", "RegistryError", "RunRecord", "is_torchscript", "load_model_file", "parse_model_ref"]

#: the longest name and description a model may have
MAX_NAME, MAX_DESCRIPTION = 200, 5000
#: the manifest fields that describe a model (the latest run recording each wins)
MODEL_FIELDS = ("name", "description", "owner")


def parse_model_ref(value: Any, what: str = "initial model") -> tuple[str, str | None]:
    """``MODEL_ID`` or ``MODEL_ID/RUN_ID`` -> (model id, run id or None), both checked.

    Raises:
        ValueError: naming the value and the form expected.
    """
    if not isinstance(value, str) or value.count("/") > 1:
        raise ValueError(f"{what} must be MODEL_ID or MODEL_ID/RUN_ID, got {value!r}")
    model_id, _, run_id = value.partition("/")
    try:
        return check_model_id(model_id), (check_path_name("run id", run_id) if run_id else None)
    except ValueError as exc:
        raise ValueError(f"{what} must be MODEL_ID or MODEL_ID/RUN_ID: {exc}") from exc


def check_owner(owner: Any) -> str:
    """Return ``owner`` if it is a printable name of 1-200 characters."""
    return check_str("owner", owner, max_length=MAX_NAME)


def default_owner() -> str:
    """The owner recorded for (and checked against) this user's uploads and removals: the login name."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name (a container without a passwd entry)
        return "unknown"


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

    def object(self, key: str) -> dict[str, Any] | None:
        return next((o for o in self.manifest.get("objects", []) if o["key"] == key), None)


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
            return [
                p["Prefix"][len(prefix) :].rstrip("/")
                for page in self._pages(prefix, Delimiter="/")
                for p in page.get("CommonPrefixes", [])
            ]

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
                records.append(
                    RunRecord(model_id, run_id, False, problem=str(exc), manifest=self._shown(manifest, prefix))
                )
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
        try:
            return json.loads(self.read_artifact(record, RunFile.METRICS))
        except ValueError as exc:
            raise RegistryError(f"{RunFile.METRICS} of run {record.run_id} is not valid JSON") from exc

    def _get(self, record: RunRecord, key: str) -> bytes:
        with s3_errors(f"cannot read {key} of run {record.run_id}"):
            body = self.client.get_object(Bucket=self.bucket, Key=f"{record.model_id}/{record.run_id}/{key}")
            return body["Body"].read()

    def summary(self, model_id: str) -> dict[str, Any]:
        """What ``flip models list`` shows of a model, from its manifests only: name, owner, runs (verified and in
        all), the latest verified run and when it was made."""
        records = self.runs(model_id)
        verified = [r for r in records if r.verified]
        latest = verified[-1] if verified else None
        summary = {
            "model_id": check_model_id(model_id),
            "runs": len(records),
            "verified_runs": len(verified),
            "latest_run": latest.run_id if latest else None,
            "latest_created": latest.created if latest else None,
        }
        for name in ("name", "owner"):
            summary[name] = next(
                (r.manifest[name] for r in reversed(verified) if isinstance(r.manifest.get(name), str)), None
            )
        return summary

    def show(self, model_id: str) -> dict[str, Any]:
        """A model's metadata and runs (DLR's model metadata, from the manifests and the latest metrics.json).

        Returns:
            ``{"model_id", "bucket", "name", "description", "owner", "created", "parameter_count", "input_shape",
            "output_shape", "rounds", "sites", "latest_run", "metrics", "preprocessing", "initial_model",
            "runs": [...]}``; a field that is not known is None. ``created`` is the first run's time, the other
            fields those of the latest verified run (name, description, owner: the latest run recording them);
            ``metrics`` summarises that run's last round (the sites' sample-weighted mean and each site's test of
            the global model). ``runs`` lists every run, verified or not (with its problem).

        Raises:
            RegistryError: the model has no runs.
        """
        model_id = check_model_id(model_id)
        records = self.runs(model_id)
        if not records:
            raise RegistryError(f"model {model_id} has no runs in s3://{self.bucket}")
        runs = []
        for record in records:
            entry = {
                "run_id": record.run_id,
                "verified": record.verified,
                "created": record.created,
                "rounds": record.manifest.get("rounds"),
                "sites": record.manifest.get("sites"),
                "bytes": record.size,
                "artifacts": record.keys,
            }
            if record.verified:
                rounds = self.metrics(record).get("rounds") or []
                entry["final_metrics"] = rounds[-1].get("global", {}) if rounds else {}
            else:
                entry["problem"] = record.problem
            runs.append(entry)
        verified = [r for r in records if r.verified]
        latest = verified[-1] if verified else None
        info: dict[str, Any] = {"model_id": model_id, "bucket": self.bucket}
        for name in MODEL_FIELDS:
            info[name] = next(
                (r.manifest[name] for r in reversed(verified) if isinstance(r.manifest.get(name), str)), None
            )
        info["created"] = records[0].created or None
        manifest = latest.manifest if latest else {}
        for name in ("parameter_count", "input_shape", "output_shape", "rounds", "sites", "initial_model"):
            info[name] = manifest.get(name)
        info["latest_run"] = latest.run_id if latest else None
        info["metrics"] = self._summary(latest) if latest else None
        info["preprocessing"] = (
            manifest.get("preprocessing") if latest and RunFile.PREPROCESSING in latest.keys else None
        )
        info["runs"] = runs
        return info

    def _summary(self, record: RunRecord) -> dict[str, Any] | None:
        rounds = self.metrics(record).get("rounds") or []
        if not rounds:
            return None
        last = rounds[-1]
        return {
            "run_id": record.run_id,
            "round": last.get("round"),
            "sites_mean": last.get("global", {}),
            "global_model_tests": last.get("validation", {}),
        }

    def metrics_rows(self, model_id: str, run_id: str | None = None) -> dict[str, Any]:
        """Every metric of a verified run (default: the latest with metrics.json), per round and reporter.

        Returns:
            ``{"model_id", "run_id", "rows": [{"round", "reporter", "kind", "metrics"}]}`` where ``kind`` is
            ``train`` (a site's locally trained model), ``mean`` (the sites' sample-weighted mean, reporter
            ``global``), ``test`` (a site's test of the round's global model) or ``server`` (the server's own, e.g.
            FedOpt's step).

        Raises:
            RegistryError: no such model or run, or the run has no metrics.json.
        """
        record = self.run(model_id, run_id, RunFile.METRICS)
        rows = []
        for entry in self.metrics(record).get("rounds") or []:
            r = entry.get("round")
            rows += [
                {"round": r, "reporter": site, "kind": "train", "metrics": m}
                for site, m in sorted((entry.get("sites") or {}).items())
            ]
            if entry.get("global"):
                rows.append({"round": r, "reporter": "global", "kind": "mean", "metrics": entry["global"]})
            rows += [
                {"round": r, "reporter": site, "kind": "test", "metrics": m}
                for site, m in sorted((entry.get("validation") or {}).items())
            ]
            if isinstance(entry.get("server"), dict):
                rows.append({"round": r, "reporter": "server", "kind": "server", "metrics": entry["server"]})
        return {"model_id": record.model_id, "run_id": record.run_id, "rows": rows}

    def round_models(self, model_id: str, run_id: str | None = None) -> dict[str, Any]:
        """The per-round global models and the latest round's local models a verified run kept.

        Returns:
            ``{"model_id", "run_id", "rounds": [{"round", "key", "bytes"}], "local_models": {"round",
            "sites": [{"site", "key", "bytes"}]}}`` (empty lists when the job kept none: ``keep_round_models`` and
            ``delete_local_models_after_aggregation=False`` keep them).
        """
        record = self.run(model_id, run_id)
        rounds = sorted(
            (
                {"round": round_of_key(o["key"]), "key": o["key"], "bytes": o["size"]}
                for o in record.manifest["objects"]
                if round_of_key(o["key"]) is not None
            ),
            key=lambda e: e["round"],
        )
        local = [
            {"site": site_of_key(o["key"]), "key": o["key"], "bytes": o["size"]}
            for o in record.manifest["objects"]
            if site_of_key(o["key"]) is not None
        ]
        return {
            "model_id": record.model_id,
            "run_id": record.run_id,
            "rounds": rounds,
            "local_models": {
                "round": record.manifest.get("local_models_round"),
                "sites": sorted(local, key=lambda e: e["site"]),
            },
        }

    def download_preprocessing(
        self, model_id: str, run_id: str | None = None, out: str | Path | None = None
    ) -> Path | None:
        """Download the model's preprocessing model (the latest verified run that has one); None if it has none."""
        try:
            record = self.run(model_id, run_id, RunFile.PREPROCESSING if run_id is None else None)
        except RegistryError:
            if run_id is None and self._has_verified(model_id):
                return None
            raise
        if RunFile.PREPROCESSING not in record.keys:
            return None
        out = Path(out) if out else None
        if out is not None and out.is_dir():
            out = out / RunFile.PREPROCESSING
        return self._download(record, RunFile.PREPROCESSING, out)[0]

    def _has_verified(self, model_id: str) -> bool:
        return any(r.verified for r in self.runs(model_id))

    def download(
        self,
        model_id: str,
        run_id: str | None = None,
        out: str | Path | None = None,
        artifact: str = RunFile.GLOBAL_MODEL,
    ) -> Path:
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

    def read_artifact(self, record: RunRecord, artifact: str) -> bytes:
        """The bytes of an artifact of a run already chosen with ``run``, checked against its manifest sha256."""
        entry = record.object(check_object_key(artifact))
        if entry is None:
            raise RegistryError(f"run {record.run_id} has no {artifact} (it has {', '.join(record.keys)})")
        data = self._get(record, artifact)
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise RegistryError(f"{artifact} of run {record.run_id} does not match its manifest sha256")
        return data

    def load_artifact(self, record: RunRecord, artifact: str) -> Any:
        """A ``.pt`` artifact of a run already chosen with ``run``, downloaded, checked and loaded safely."""
        with tempfile.TemporaryDirectory(prefix="flip-artifact-") as tmp:
            return self._download(record, artifact, Path(tmp) / Path(artifact).name)[1]

    def fetch(self, record: RunRecord, artifact: str, out: Path) -> Path:
        """Download an artifact of a run already chosen with ``run`` to ``out`` (sha256 checked, a .pt must load
        safely)."""
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

    def download_report(
        self, model_id: str, run_id: str | None = None, folder: str | Path = RunFile.REPORT_DIR
    ) -> Path:
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

    def upload(
        self,
        model_id: str | None,
        model_file: str | Path,
        run_id: str | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        preprocessing: str | Path | None = None,
        input_shape: Any = None,
        models_file: str | Path | None = None,
    ) -> dict[str, Any]:
        """Register a model file (a weights-only torch.save state or a TorchScript archive) as a new verified run,
        e.g. a model for a job to start from (``initial_model``).

        Args:
            model_id: the model's UUID; None: a new one (the manifest's ``model_id`` names it).
            model_file: the file to register (NaN/Inf refused).
            run_id: the new run's id; default ``upload-<UTC time stamp>-<random hex>`` (unique).
            name, description: what the model is (printable text, at most 200 / 5000 characters).
            owner: who owns it (default: the login name); a removal must name the same owner.
            preprocessing: a preprocessing model (TorchScript, or a state dict built by ``get_preprocessing()`` of
                ``models_file``): it must run on a dummy input of ``input_shape``; stored as ``preprocessing.pt``.
            input_shape: the shape of one raw input, no batch dimension (``(8, 8)`` or ``"8,8"``): the model (or the
                preprocessing model, whose output then feeds the model) is run on a zero input of it.
            models_file: the app's ``models.py``: a state dict must then load strictly into ``get_model()``.

        Returns:
            The verified manifest (with ``model_id``, ``run_id``, name, description, owner, format, parameter count
            and the shapes that are known).

        Raises:
            RegistryError: a file cannot be loaded safely, does not fit or does not run (named), or the run already
                exists (a run is never replaced).
            ValueError: a bad argument (named). StorageError: the upload failed.
        """
        model_id = check_model_id(model_id) if model_id is not None else str(uuid.uuid4())
        info: dict[str, Any] = {
            "model_id": model_id,
            "source": "upload",
            "owner": check_owner(owner or default_owner()),
        }
        if name is not None:
            info["name"] = check_str("name", name, max_length=MAX_NAME)
        if description is not None:
            info["description"] = check_str("description", description, empty=True, max_length=MAX_DESCRIPTION)
        shape = check_input_shape(input_shape) if input_shape is not None else None
        if preprocessing is not None and shape is None:
            raise ValueError(
                "a preprocessing model needs the input shape it takes (input_shape, e.g. '8,8'): it is "
                "checked by running it on a dummy input of that shape"
            )
        models = load_models_module(models_file) if models_file is not None else None
        model_file = Path(model_file)
        files = {RunFile.GLOBAL_MODEL: model_file}
        model_shape = shape
        if preprocessing is not None:
            pre = check_preprocessing_file(preprocessing, shape, models)
            info["preprocessing"] = pre.manifest()
            model_shape = pre.output_shape
            files[RunFile.PREPROCESSING] = Path(preprocessing)
        checked = check_model_file(model_file, models, model_shape)
        info.update(checked.manifest())
        if preprocessing is not None:  # the model's input is the raw input the preprocessing model takes
            info["input_shape"] = list(shape)
        run_id = run_id or unique_run_id("upload")
        prefix = run_prefix(model_id, run_id)
        try:
            existing = read_manifest(self.client, self.bucket, prefix) is not None
        except VerificationError:  # a manifest that is not JSON is still someone's
            existing = True
        if existing:
            raise RegistryError(
                f"run {run_id} of model {model_id} already exists in s3://{self.bucket}/{prefix}: "
                f"a run is never replaced, choose another run id"
            )
        upload_run(self.client, self.bucket, prefix, files, {**info, "run_id": run_id})
        return verify_run(self.client, self.bucket, prefix)

    def owners(self, model_id: str) -> set[str]:
        """The owners the model's runs record (any run whose manifest can be read)."""
        return {r.manifest["owner"] for r in self.runs(model_id) if isinstance(r.manifest.get("owner"), str)}

    def remove(self, model_id: str, owner: str | None = None) -> int:
        """Delete every object of the model (manifests first, so no run looks complete meanwhile).

        Args:
            owner: who removes it (default: the login name): if a run of the model records an owner, it must be
                this one.

        Raises:
            RegistryError: the model has no objects, or it is another owner's (named).
        """
        model_id = check_model_id(model_id)
        owner = check_owner(owner or default_owner())
        others = sorted(self.owners(model_id) - {owner})
        if others:
            raise RegistryError(
                f"model {model_id} is owned by {', '.join(others)}, not {owner}: only its owner "
                "removes it (give --owner as recorded)"
            )
        with s3_errors(f"cannot remove model {model_id}"):
            keys = [o["Key"] for page in self._pages(f"{model_id}/") for o in page.get("Contents", [])]
            if not keys:
                raise RegistryError(f"model {model_id} has no objects in s3://{self.bucket}")
            keys.sort(key=lambda k: not k.endswith("/" + RunFile.MANIFEST))
            for key in keys:
                self.client.delete_object(Bucket=self.bucket, Key=key)
        return len(keys)
