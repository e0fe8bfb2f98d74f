"""The end of a run (flip/nvflare/end_of_run.py) hands PersistToS3AndCleanup its run id, artifacts and manifest
fields as arguments; SPEC's ``execute(fl_ctx)`` still works on its own. Real S3 (weed), a real Workspace."""

from __future__ import annotations

import html
import logging
import uuid

import pytest
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext

from flip.constants import RunFile, RunStatus
from flip.nvflare.components import PersistToS3AndCleanup, ServerEventHandler, ValidationJsonGenerator
from flip.nvflare.end_of_run import finish_run
from flip.report import UPLOAD_PENDING
from flip.run_metrics import RunMetrics
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from tests.fakes import FakeEngine

pytestmark = pytest.mark.s3


class Scale(torch.nn.Module):
    def forward(self, x):
        return x / 255.0


@pytest.fixture
def run(tmp_path, weed, monkeypatch):
    """A server run folder with the job's custom/preprocessing.pt (a TorchScript module), and a persist-and-cleanup
    set up at START_RUN."""
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "ws").mkdir()
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path / "ws", "server"), private=True, sticky=False)
    job_id = str(uuid.uuid4())
    ctx.set_prop(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    custom = tmp_path / "ws" / job_id / "app_server" / "custom"
    custom.mkdir(parents=True)
    torch.jit.script(Scale()).save(str(custom / RunFile.PREPROCESSING))
    persist = PersistToS3AndCleanup(str(uuid.uuid4()), persistor_id="")
    persist.handle_event(EventType.START_RUN, ctx)
    return ctx, persist, job_id, tmp_path / "ws" / job_id


def _keys(weed, prefix):
    return {o["key"] for o in verify_run(weed._client(), weed.bucket, prefix)["objects"]}


def test_execute_with_only_fl_ctx_uploads_under_the_job_id(run, weed):
    """SPEC.md's form: no run id, artifacts or info given."""
    ctx, persist, job_id, _ = run
    manifest = persist.execute(ctx)
    assert manifest["prefix"] == run_prefix(persist.model_id, job_id)
    assert _keys(weed, manifest["prefix"]) == {RunFile.PREPROCESSING}


def test_execute_takes_run_id_artifacts_and_info_as_arguments(run, weed):
    ctx, persist, _, folder = run
    (folder / "notes.json").write_text("{}")
    manifest = persist.execute(
        ctx,
        run_id="run-7",
        artifacts={"results/notes.json": folder / "notes.json", "absent.json": folder / "absent.json"},
        info={"rounds": 2, "sites": ["site-1"]},
    )
    assert manifest["prefix"] == run_prefix(persist.model_id, "run-7")
    assert manifest["rounds"] == 2 and manifest["sites"] == ["site-1"] and "versions" in manifest
    assert _keys(weed, manifest["prefix"]) == {RunFile.PREPROCESSING, "results/notes.json"}  # a missing file: skipped


def test_finish_run_writes_the_run_files_then_uploads(run, weed, caplog):
    caplog.set_level(logging.INFO)
    ctx, persist, job_id, folder = run
    metrics = RunMetrics(persist.model_id, job_id, "run-8")
    metrics.add_contribution(0, "site-1", {"accuracy": 0.5}, num_samples=4)
    metrics.round_done(0)
    handler = ServerEventHandler(persist.model_id)  # only logs here
    end = finish_run(handler, ctx, metrics, ValidationJsonGenerator(), persist, [RunStatus.INITIATED])
    prefix = run_prefix(persist.model_id, "run-8")
    assert end.status == RunStatus.RESULTS_UPLOADED and end.upload_key == f"s3://{weed.bucket}/{prefix}"
    assert end.reason is None and end.advice is None
    keys = _keys(weed, prefix)
    assert {RunFile.METRICS, RunFile.PREPROCESSING, RunFile.REPORT_INDEX} <= keys
    assert not any(k.startswith(RunFile.RESULTS_DIR) for k in keys)  # no validation results: no results JSON
    assert not (folder / RunFile.METRICS).exists()  # cleaned after the verified upload
    report = weed._client().get_object(Bucket=weed.bucket, Key=prefix + RunFile.REPORT_INDEX)["Body"].read()
    assert html.escape(UPLOAD_PENDING) in report.decode()  # written before the upload: it says so (not INITIATED)
