"""PersistToS3AndCleanup: upload the run's model and results to S3, verify them, and only then clean up."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from flip.checks import check_component_id, check_model_id, check_object_key
from flip.constants import ComponentId, RunFile
from flip.errors import LookupFailed, SettingsError, UploadError
from flip.methods.weighted import check_finite
from flip.nvflare.utils import app_custom_dir, get_component, new_run_id, run_dir, software_versions, workspace_root
from flip.settings import load_settings
from flip.storage.layout import local_model_key, run_prefix
from flip.storage.model_files import load_model_file, parameter_count
from flip.storage.pending import clean_run_dir, complete_upload, record_pending


def state_dict_from_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a persistor checkpoint (``{"model": ..., "train_conf": ...}`` or a bare state dict) safely."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("model", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise UploadError(f"{path.name} does not hold a state dict")
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in state.items()}


class PersistToS3AndCleanup(FLComponent):
    """Save the aggregated model and reports of a run to S3, verify, then delete the run's files.

    Layout: ``s3://<FLIP_MODELS_BUCKET>/<model_id>/<run_id>/`` with ``global_model.pt`` (a plain state dict,
    loadable with ``torch.load(..., weights_only=True)``), ``best_global_model.pt`` (only if a model selector
    saved one), the artifacts the caller passes (the ServerEventHandler: ``results/*.json``, ``metrics.json``,
    ``report/curves.png``, ``report/index.html``), ``preprocessing.py`` (if the job's custom/ folder has one) and
    ``manifest.json`` written last. The run folder is
    cleaned (logs kept) only after every object was verified against the manifest. On any failure nothing is
    deleted and ``upload_pending.json`` stays in the run folder so ``flip upload --resume`` can finish later.

    Called by the ServerEventHandler at the end of the run (flip.nvflare.end_of_run), with the run id, the
    artifacts and the manifest's extra fields as arguments; it does not act on events by itself beyond setting
    up at START_RUN. Attributes besides the arguments: ``model_persistor`` (the persistor, found at START_RUN),
    ``model_inventory`` (the persistor's inventory, read when the models are staged), ``model_dir`` (the folder the
    persistor's final global model was found in, set when the models are staged: informational, flip does not use
    it), ``bucket_name`` (FLIP_MODELS_BUCKET, read at START_RUN), ``manifest`` (the verified manifest) and
    ``pending`` (this run's ``upload_pending.json`` record, once written).

    Args:
        model_id: the model's UUID (the first part of the S3 key).
        persistor_id: id of the run's PTFileModelPersistor. Default ``persistor``. ``""`` for a job that trains
            no model (evaluation-only): then only its artifacts are uploaded.
        flip: a platform object, accepted for FLIP's API (SPEC.md) and kept as ``flip``; not used: this component
            reports nothing to the platform (the ServerEventHandler reports the run's statuses).

    Raises:
        ValueError: model_id is not a UUID, or persistor_id is empty.
    """

    def __init__(self, model_id: str, persistor_id: str = ComponentId.PERSISTOR, flip=None):
        super().__init__()
        self.model_id = check_model_id(model_id)
        self.persistor_id = check_component_id("persistor_id", persistor_id, empty=True)
        self.model_persistor: PTFileModelPersistor | None = None
        self.model_inventory: dict = {}
        self.model_dir = ""
        self.bucket_name = ""
        self.flip = flip
        self.settings = None
        self.manifest: dict[str, Any] | None = None
        #: the upload_pending.json record of this run's upload, once written (None: no upload was recorded)
        self.pending: dict[str, Any] | None = None
        #: the global model's parameter count and the round of the local models uploaded, once staged
        self.parameter_count: int | None = None
        self.local_models_round: int | None = None

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            try:
                if self.persistor_id:
                    self.model_persistor = get_component(fl_ctx, self.persistor_id, PTFileModelPersistor, "persistor")
                settings = load_settings()
            except (LookupFailed, SettingsError) as exc:
                self.system_panic(f"{type(self).__name__}: {exc}", fl_ctx)
                return
            self.settings = settings
            self.bucket_name = settings.models_bucket

    # -- the three steps ------------------------------------------------------------------------------------
    def execute(
        self,
        fl_ctx: FLContext,
        *,
        run_id: str | None = None,
        artifacts: Mapping[str, str | Path] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Upload, verify, then clean up; return the verified manifest.

        Args:
            fl_ctx: the run's context.
            run_id, artifacts, info: see :meth:`upload_results_to_s3_bucket`.

        Raises:
            NonFiniteModelError: the global (or best) model holds NaN/Inf: nothing was uploaded or recorded as
                pending (such a model is never uploaded).
            FlipError (UploadError, VerificationError, StorageError, CleanupError): nothing was deleted.
        """
        manifest = self.upload_results_to_s3_bucket(fl_ctx, run_id=run_id, artifacts=artifacts, info=info)
        self.cleanup(fl_ctx)
        return manifest

    def upload_results_to_s3_bucket(
        self,
        fl_ctx: FLContext,
        *,
        run_id: str | None = None,
        artifacts: Mapping[str, str | Path] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Stage the models and artifacts, record ``upload_pending.json``, upload, verify; return the manifest.

        Args:
            fl_ctx: the run's context.
            run_id: the S3 key's job part; default: the job id (made unique for the simulator's fixed job id).
            artifacts: other files to upload, object key -> local path (a path that is not a file is skipped).
            info: extra manifest fields (e.g. ``rounds``, ``sites``); the software versions are added.
        """
        self.pending = None
        if (self.persistor_id and self.model_persistor is None) or self.settings is None:
            raise UploadError(f"{type(self).__name__} was not set up at run start (see the earlier error)")
        folder = run_dir(fl_ctx)
        run_id = run_id or new_run_id(fl_ctx.get_job_id())
        prefix = run_prefix(self.model_id, run_id)
        files = self._stage_artifacts(fl_ctx, folder / RunFile.STAGING_DIR, artifacts or {})
        info = {**(info or {}), **self._model_info(), "versions": software_versions()}
        self.pending = record_pending(
            folder,
            model_id=self.model_id,
            job_id=fl_ctx.get_job_id(),
            run_id=run_id,
            bucket=self.bucket_name,
            files=files,
            info=info,
        )
        self.log_info(fl_ctx, f"uploading {len(files)} objects to s3://{self.bucket_name}/{prefix}")
        self.manifest = complete_upload(
            folder,
            self.pending,
            sse=self.settings.s3_sse,
            create_bucket=self.settings.s3_create_bucket,
            transfer=self.settings.transfer(),
            log=lambda msg: self.log_info(fl_ctx, msg),
            check_files=False,
        )
        self.log_info(
            fl_ctx,
            f"verified s3://{self.bucket_name}/{prefix}{RunFile.MANIFEST}: "
            f"{len(self.manifest['objects'])} objects match",
        )
        return self.manifest

    def cleanup(self, fl_ctx: FLContext) -> list[str]:
        """Delete the run's files (logs kept). Only call after a verified upload."""
        folder = run_dir(fl_ctx)
        deleted = clean_run_dir(folder, workspace_root(fl_ctx))
        self.log_info(fl_ctx, f"cleaned the run folder: removed {len(deleted)} entries, kept the logs")
        return deleted

    # -- helpers --------------------------------------------------------------------------------------------
    def _model_info(self) -> dict[str, Any]:
        """The manifest's fields about the model: its parameter count, where the run started from (the
        persistor's record) and which round the local models are of."""
        info: dict[str, Any] = {}
        if self.parameter_count is not None:
            info["parameter_count"] = self.parameter_count
        initial = getattr(self.model_persistor, "initial_info", None)
        if isinstance(initial, dict):
            info["initial_model"] = initial
            carried = ("input_shape", "output_shape", "preprocessing")  # what the model is: it keeps its shapes
            if initial.get("model_id") == self.model_id:  # fine-tuning the same model: it keeps its name too
                carried += ("name", "description", "owner")
            info.update({k: initial[k] for k in carried if k in initial})
        if self.local_models_round is not None:
            info["local_models_round"] = self.local_models_round
        return info

    def _stage_artifacts(
        self, fl_ctx: FLContext, staging: Path, artifacts: Mapping[str, str | Path]
    ) -> dict[str, Path]:
        staging.mkdir(parents=True, exist_ok=True)
        files = self._stage_models(fl_ctx, staging) if self.model_persistor is not None else {}
        custom_pre = app_custom_dir(fl_ctx) / RunFile.PREPROCESSING
        if custom_pre.is_file() and RunFile.PREPROCESSING not in artifacts:
            load_model_file(custom_pre)  # a preprocessing model that needs code to load is refused
            artifacts = {RunFile.PREPROCESSING: custom_pre, **artifacts}
        artifacts = {**self._latest_local_models(run_dir(fl_ctx)), **artifacts}
        for key, source in artifacts.items():
            source = Path(source)
            if source.is_file():
                target = staging / check_object_key(key)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                files[key] = target
        if not files:
            raise UploadError("the run produced nothing to upload")
        return files

    def _latest_local_models(self, folder: Path) -> dict[str, Path]:
        """The latest round's local models the aggregator kept (none unless the job keeps them), by object key."""
        self.local_models_round = None
        rounds = [
            (int(p.name.split("_", 1)[1]), p)
            for p in (folder / RunFile.LOCAL_MODELS_DIR).glob("round_*")
            if p.is_dir() and p.name.split("_", 1)[1].isdigit()
        ]
        if not rounds:
            return {}
        number, latest = max(rounds)
        models = {local_model_key(p.stem): p for p in sorted(latest.glob("*.pt")) if p.is_file()}
        if models:
            self.local_models_round = number
        return models

    def _stage_models(self, fl_ctx: FLContext, staging: Path) -> dict[str, Path]:
        self.model_inventory = self.model_persistor.get_model_inventory(fl_ctx) or {}
        final = self.model_inventory.get(self.model_persistor.global_model_file_name)
        if final is None:
            raise UploadError(
                f"persistor {self.persistor_id!r} saved no final global model "
                f"({self.model_persistor.global_model_file_name}): nothing to upload"
            )
        self.model_dir = os.path.dirname(final.location)
        files: dict[str, Path] = {}
        wanted = [
            (self.model_persistor.global_model_file_name, RunFile.GLOBAL_MODEL),
            (self.model_persistor.best_global_model_file_name, RunFile.BEST_MODEL),
        ]
        for inventory_name, key in wanted:
            desc = self.model_inventory.get(inventory_name)
            if desc is None:
                continue
            state = state_dict_from_checkpoint(Path(desc.location))
            check_finite(state, key)  # a model with NaN/Inf is never uploaded (raises before anything is staged)
            if key == RunFile.GLOBAL_MODEL:
                self.parameter_count = parameter_count(state)
            target = staging / key
            torch.save(state, target)
            files[key] = target
        return files
