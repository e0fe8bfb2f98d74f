"""Hostile inputs to S3 persistence, resume and the model registry (issue 14), on a real S3 server (weed mini).

Each test names the hostile case and why the code before the fix failed it. Run folders are built by hand
(``<tmp>/workspace/<job_id>/flip_upload/...``) with ``upload_pending.json`` written by the server's own code path
(``record_pending``); what an attacker or an accident can change is then changed on disk.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext

from flip.checks import check_object_key
from flip.cli import main as flip_cli
from flip.constants import ComponentId, RunFile, RunStatus
from flip.errors import RegistryError, StorageError, UploadError, VerificationError
from flip.nvflare.components.persist_to_s3_and_cleanup import PersistToS3AndCleanup
from flip.nvflare.components.server_event_handler import ServerEventHandler
from flip.nvflare.components.validation_json_generator import ValidationJsonGenerator
from flip.platform.dev import LocalPlatform
from flip.settings import load_settings
from flip.storage.client import make_s3_client
from flip.storage.layout import run_prefix
from flip.storage.manifest import verify_run
from flip.storage.pending import find_pending, is_log_file, read_pending, record_pending, resume
from flip.storage.registry import ModelRegistry
from flip.storage.upload import upload_run
from tests.conftest import environ
from tests.fakes import ServerEngine

SECRET = "-----BEGIN PRIVATE KEY----- not for S3"


# -- a server workspace with one run whose upload is pending ----------------------------------------------------


def _workspace(tmp_path: Path, bucket: str = "flip-models") -> SimpleNamespace:
    """``<tmp>/workspace/`` with ``startup/server.key`` and a run folder whose upload is recorded but not done."""
    workspace = tmp_path / "workspace"
    (workspace / "startup").mkdir(parents=True)
    key = workspace / "startup" / "server.key"
    key.write_text(SECRET)
    job_id = str(uuid.uuid4())
    run = workspace / job_id
    (run / "app_server" / "config").mkdir(parents=True)
    (run / "app_server" / "custom").mkdir()
    (run / "app_server" / "FL_global_model.pt").write_bytes(b"checkpoint")
    (run / "log.txt").write_text("the run's log")
    staging = run / RunFile.STAGING_DIR
    staging.mkdir()
    model = staging / RunFile.GLOBAL_MODEL
    torch.save({"w": torch.arange(4.0)}, model)
    metrics = staging / RunFile.METRICS
    metrics.write_text('{"rounds": []}')
    model_id = str(uuid.uuid4())
    record = record_pending(
        run,
        model_id=model_id,
        job_id=job_id,
        run_id=job_id,
        bucket=bucket,
        files={RunFile.GLOBAL_MODEL: model, RunFile.METRICS: metrics},
        info={"rounds": 1, "sites": ["site-1"]},
    )
    return SimpleNamespace(
        workspace=workspace, run=run, key=key, job_id=job_id, model_id=model_id, prefix=record["prefix"], record=record
    )


def _pending(run: Path) -> dict:
    return json.loads((run / RunFile.UPLOAD_PENDING).read_text())


def _rewrite_pending(run: Path, **changes) -> None:
    (run / RunFile.UPLOAD_PENDING).write_text(json.dumps({**_pending(run), **changes}))


def _digest(path: Path) -> dict:
    import hashlib

    data = path.read_bytes()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _objects(weed, prefix: str) -> list[str]:
    listing = weed._client().list_objects_v2(Bucket=weed.bucket, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


def _resume(weed, path: Path, **env) -> list[str]:
    lines: list[str] = []
    with environ(**{**weed.env, **env}):
        resume(path, load_settings(), log=lines.append)
    return lines


def _assert_untouched(ws: SimpleNamespace, weed) -> None:
    """Nothing was uploaded under the run's prefix, nothing deleted, the server key is where it was."""
    assert _objects(weed, ws.prefix) == []
    assert ws.key.read_text() == SECRET
    assert (ws.run / RunFile.UPLOAD_PENDING).is_file()
    assert (ws.run / RunFile.STAGING_DIR / RunFile.GLOBAL_MODEL).is_file()
    assert (ws.run / "app_server" / "FL_global_model.pt").is_file()


# -- item 2: only the pending record the server wrote for that run is honoured ----------------------------------


@pytest.mark.s3
def test_resume_of_a_genuine_pending_upload_completes(tmp_path, weed):
    """The control case: the record the server wrote is honoured, uploaded, verified, and the run folder cleaned."""
    ws = _workspace(tmp_path)
    _resume(weed, ws.workspace)
    manifest = verify_run(weed._client(), weed.bucket, ws.prefix)
    assert {o["key"] for o in manifest["objects"]} == {RunFile.GLOBAL_MODEL, RunFile.METRICS}
    assert (manifest["model_id"], manifest["job_id"], manifest["run_id"]) == (ws.model_id, ws.job_id, ws.job_id)
    assert [p.name for p in ws.run.iterdir()] == ["log.txt"]
    assert ws.key.read_text() == SECRET


@pytest.mark.s3
def test_resume_refuses_pending_file_in_custom_folder(tmp_path, weed):
    """A job ships ``custom/upload_pending.json`` naming ``startup/server.key`` (in the format flip wrote before):
    the old find_pending took every upload_pending.json below PATH (rglob) and uploaded the key, then cleaned the
    folder the file named as workspace. Now only run folders are looked at, and a file inside the job's app folder
    is refused even when named directly."""
    ws = _workspace(tmp_path)
    (ws.run / RunFile.UPLOAD_PENDING).unlink()  # this run's own upload was never recorded
    custom = ws.run / "app_server" / "custom"
    forged_prefix = f"{ws.model_id}/stolen/"
    forged = {
        "bucket": weed.bucket,
        "prefix": forged_prefix,
        "info": {},
        "workspace_root": str(ws.workspace),
        "files": {RunFile.GLOBAL_MODEL: str(ws.key)},
    }
    (custom / RunFile.UPLOAD_PENDING).write_text(json.dumps(forged))
    assert find_pending(ws.workspace) == [] and find_pending(ws.run) == []
    for path in (ws.workspace, ws.run):
        with pytest.raises(UploadError, match="there is nothing to resume"):
            _resume(weed, path)
    with pytest.raises(UploadError, match=r"inside the job's app folder .*app_server"):
        _resume(weed, custom)
    assert _objects(weed, forged_prefix) == []
    assert ws.key.read_text() == SECRET and (custom / RunFile.UPLOAD_PENDING).is_file()


def _point_model_at(ws: SimpleNamespace, path: str, source: Path) -> None:
    files = _pending(ws.run)["files"]
    files[RunFile.GLOBAL_MODEL] = {"path": path, **_digest(source)}  # the attacker can hash the key too
    _rewrite_pending(ws.run, files=files)


@pytest.mark.s3
def test_resume_refuses_absolute_path_to_server_key(tmp_path, weed):
    """A staged path ``/…/startup/server.key``: the old resume joined it to the run folder (an absolute path
    wins) and uploaded the server's private key."""
    ws = _workspace(tmp_path)
    _point_model_at(ws, str(ws.key), ws.key)
    with pytest.raises(UploadError, match=f"staged path '{ws.key}' is refused: expected a relative path"):
        _resume(weed, ws.workspace)
    _assert_untouched(ws, weed)


@pytest.mark.s3
def test_resume_refuses_dotdot_path_to_server_key(tmp_path, weed):
    """``flip_upload/../../startup/server.key``: the old resume followed the '..' out of the run folder."""
    ws = _workspace(tmp_path)
    _point_model_at(ws, "flip_upload/../../startup/server.key", ws.key)
    with pytest.raises(UploadError, match=r"staged path 'flip_upload/\.\./\.\./startup/server\.key' is refused"):
        _resume(weed, ws.workspace)
    _assert_untouched(ws, weed)


@pytest.mark.s3
@pytest.mark.parametrize("link", ["file", "staging folder"])
def test_resume_refuses_staged_symlink_to_server_key(tmp_path, weed, link):
    """A staged file (or the whole staging folder) that is a symlink out of the run folder: the old resume read
    through it. Paths are checked after resolving symlinks."""
    ws = _workspace(tmp_path)
    staged = ws.run / RunFile.STAGING_DIR / RunFile.GLOBAL_MODEL
    if link == "file":
        staged.unlink()
        staged.symlink_to(ws.key)
    else:
        elsewhere = tmp_path / "elsewhere"
        (ws.run / RunFile.STAGING_DIR).rename(elsewhere)
        (elsewhere / RunFile.GLOBAL_MODEL).unlink()
        (elsewhere / RunFile.GLOBAL_MODEL).symlink_to(ws.key)
        (ws.run / RunFile.STAGING_DIR).symlink_to(elsewhere, target_is_directory=True)
    _point_model_at(ws, "flip_upload/global_model.pt", ws.key)
    with pytest.raises(
        UploadError,
        match=r"staged path 'flip_upload/global_model.pt' is refused: it resolves to "
        r".*(server\.key|elsewhere).*, outside",
    ):
        _resume(weed, ws.workspace)
    assert _objects(weed, ws.prefix) == [] and ws.key.read_text() == SECRET


@pytest.mark.s3
def test_resume_refuses_foreign_bucket(tmp_path, weed):
    """The record names a bucket the settings do not give: the old resume sent the run (or whatever the record
    named) to any bucket the credentials reach."""
    ws = _workspace(tmp_path)
    _rewrite_pending(ws.run, bucket="attacker-bucket")
    with pytest.raises(UploadError, match="bucket 'attacker-bucket' is not FLIP_MODELS_BUCKET 'flip-models'"):
        _resume(weed, ws.workspace)
    _assert_untouched(ws, weed)


@pytest.mark.s3
def test_resume_refuses_foreign_prefix(tmp_path, weed):
    """The record's prefix is another model's: the old resume wrote (and cleaned after verifying) there. The
    prefix must be the one the record's own model id and run id give."""
    ws = _workspace(tmp_path)
    other = f"{uuid.uuid4()}/{ws.job_id}/"
    _rewrite_pending(ws.run, prefix=other)
    with pytest.raises(UploadError, match=f"prefix '{other}' is not '{ws.prefix}'"):
        _resume(weed, ws.workspace)
    assert _objects(weed, other) == []
    _assert_untouched(ws, weed)


@pytest.mark.s3
def test_resume_refuses_pending_of_another_job(tmp_path, weed):
    """A record copied from another run folder (its job id is not this folder's): the old code had no binding."""
    ws = _workspace(tmp_path)
    _rewrite_pending(ws.run, job_id="another-job", run_id="another-job")
    with pytest.raises(UploadError, match=f"it is for job 'another-job', but the run folder is '{ws.job_id}'"):
        _resume(weed, ws.workspace)
    _assert_untouched(ws, weed)


@pytest.mark.s3
def test_resume_refuses_a_forged_workspace_root(tmp_path, weed):
    """``workspace_root`` chose what the old cleanup treated as the workspace; it is no longer read: the folder
    cleaned is the run folder, inside its parent. A record carrying it is not one flip writes."""
    ws = _workspace(tmp_path)
    _rewrite_pending(ws.run, workspace_root="/")
    with pytest.raises(UploadError, match=r"it has the fields .*'workspace_root'.*, expected"):
        _resume(weed, ws.workspace)
    _assert_untouched(ws, weed)


@pytest.mark.s3
def test_resume_refuses_a_staged_file_changed_since_it_was_recorded(tmp_path, weed):
    """The staged model was replaced after the server recorded it: the old resume uploaded whatever was there."""
    ws = _workspace(tmp_path)
    torch.save({"w": torch.zeros(4)}, ws.run / RunFile.STAGING_DIR / RunFile.GLOBAL_MODEL)
    with pytest.raises(UploadError, match="the staged global_model.pt .* is not the file recorded"):
        _resume(weed, ws.workspace)
    _assert_untouched(ws, weed)


@pytest.mark.unit
def test_read_pending_names_each_refused_value(tmp_path):
    """Malformed records are refused with the value named (the old read_pending checked only field presence)."""
    ws = _workspace(tmp_path)
    genuine = json.dumps(_pending(ws.run))
    cases = {
        "a list": ([], "format 'list' is not the record flip writes"),
        "old format": ({**json.loads(genuine), "format": 1}, "format 1 is not the record flip writes"),
        "bad sha256": (None, "needs a sha256 of 64 lowercase hex digits"),
        "manifest key": (None, "files\\['manifest.json'\\] must be"),
    }
    for name, (content, message) in cases.items():
        record = json.loads(genuine)
        if name == "bad sha256":
            record["files"][RunFile.GLOBAL_MODEL]["sha256"] = "x" * 64
            content = record
        elif name == "manifest key":
            record["files"][RunFile.MANIFEST] = record["files"][RunFile.METRICS]
            content = record
        (ws.run / RunFile.UPLOAD_PENDING).write_text(json.dumps(content))
        with pytest.raises(UploadError, match=message):
            read_pending(ws.run, "flip-models")


# -- item 3: a reused prefix never replaces or stands in for a run ----------------------------------------------


def _other_run_at(weed, prefix: str, tmp_path: Path) -> dict:
    other = tmp_path / "other.pt"
    torch.save({"w": torch.ones(4)}, other)
    upload_run(weed._client(), weed.bucket, prefix, {RunFile.GLOBAL_MODEL: other}, {"source": "someone else"})
    return verify_run(weed._client(), weed.bucket, prefix)


@pytest.mark.s3
def test_resume_refuses_manifest_of_other_files_at_reused_prefix(tmp_path, weed):
    """The prefix already holds a verified run of other files: the old resume took any manifest that verified as
    this run's and cleaned the run folder, while this run's model was never in S3."""
    ws = _workspace(tmp_path)
    theirs = _other_run_at(weed, ws.prefix, tmp_path)
    with pytest.raises(
        VerificationError,
        match="describes other files than this run staged: metrics.json: staged "
        "but not listed; global_model.pt: sha256/size differ",
    ):
        _resume(weed, ws.workspace)
    assert (ws.run / RunFile.UPLOAD_PENDING).is_file()
    assert (ws.run / RunFile.STAGING_DIR / RunFile.GLOBAL_MODEL).is_file()
    assert verify_run(weed._client(), weed.bucket, ws.prefix)["objects"] == theirs["objects"]


@pytest.mark.s3
def test_upload_run_refuses_to_replace_a_verified_run(tmp_path, weed):
    """upload_run at a prefix holding a verified run of other files: the old code overwrote its objects and its
    manifest. Now nothing is sent and the run there still verifies."""
    prefix = run_prefix(str(uuid.uuid4()), "job-1")
    theirs = _other_run_at(weed, prefix, tmp_path)
    mine = tmp_path / "mine.pt"
    torch.save({"w": torch.zeros(4)}, mine)
    with pytest.raises(UploadError, match="it holds another run, which is never replaced"):
        upload_run(weed._client(), weed.bucket, prefix, {RunFile.GLOBAL_MODEL: mine}, {})
    assert verify_run(weed._client(), weed.bucket, prefix)["objects"] == theirs["objects"]


@pytest.mark.s3
def test_upload_run_never_replaces_a_manifest_written_meanwhile(tmp_path, weed):
    """Another upload finishes at the same prefix while ours is sending its objects (done here from the on_object
    callback): the old code wrote its manifest over the other one. The manifest is put with ``If-None-Match: *``,
    which weed honours, so the other run stays whole."""
    prefix = run_prefix(str(uuid.uuid4()), "job-1")
    mine = tmp_path / "mine.pt"
    torch.save({"w": torch.zeros(4)}, mine)
    theirs: list[dict] = []

    def other_upload_finishes(entry, uploaded):
        if not theirs:
            theirs.append(_other_run_at(weed, prefix, tmp_path))

    with pytest.raises(UploadError, match="another upload wrote a manifest there meanwhile"):
        upload_run(weed._client(), weed.bucket, prefix, {"mine.pt": mine}, {}, on_object=other_upload_finishes)
    assert verify_run(weed._client(), weed.bucket, prefix)["objects"] == theirs[0]["objects"]


@pytest.mark.s3
def test_resume_after_a_failed_cleanup_needs_no_staged_files(tmp_path, weed):
    """The matching-manifest shortcut still works: a run whose upload verified but whose cleanup stopped after
    removing flip_upload/ is finished from the record's hashes alone."""
    ws = _workspace(tmp_path)
    _resume_upload_only(weed, ws)
    for staged in (ws.run / RunFile.STAGING_DIR).iterdir():
        staged.unlink()
    lines = _resume(weed, ws.workspace)
    assert any("already uploaded and verified" in line for line in lines)
    assert [p.name for p in ws.run.iterdir()] == ["log.txt"]


def _resume_upload_only(weed, ws: SimpleNamespace) -> None:
    from flip.storage.pending import complete_upload

    with environ(**weed.env):
        complete_upload(ws.run, read_pending(ws.run, weed.bucket))


@pytest.mark.s3
def test_registry_upload_same_second_gets_distinct_run_ids(tmp_path, weed, monkeypatch):
    """Two uploads in the same second: the old run id had one-second resolution, so the second overwrote the
    first. The clock is held still to make "the same second" certain."""
    model_id = str(uuid.uuid4())
    registry = ModelRegistry(weed._client(), weed.bucket)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    torch.save({"w": torch.ones(2)}, first)
    torch.save({"w": torch.zeros(2)}, second)
    frozen = time.gmtime()
    monkeypatch.setattr(time, "gmtime", lambda *args: frozen)
    a = registry.upload(model_id, first)
    b = registry.upload(model_id, second)
    assert a["run_id"] != b["run_id"]
    runs = {r.run_id: r for r in registry.runs(model_id)}
    assert set(runs) == {a["run_id"], b["run_id"]} and all(r.verified for r in runs.values())
    assert torch.equal(registry.load(model_id, a["run_id"])["w"], torch.ones(2))
    assert torch.equal(registry.load(model_id, b["run_id"])["w"], torch.zeros(2))


@pytest.mark.s3
def test_registry_upload_refuses_existing_verified_run(tmp_path, weed):
    """An explicit run id that already holds a verified run: the old upload replaced it silently."""
    model_id = str(uuid.uuid4())
    registry = ModelRegistry(weed._client(), weed.bucket)
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    torch.save({"w": torch.ones(2)}, first)
    torch.save({"w": torch.zeros(2)}, second)
    registry.upload(model_id, first, run_id="fixed")
    with pytest.raises(RegistryError, match=f"run fixed of model {model_id} already exists .* never replaced"):
        registry.upload(model_id, second, run_id="fixed")
    assert torch.equal(registry.load(model_id, "fixed")["w"], torch.ones(2))


# -- item 4: the advice after a failed end of run is true --------------------------------------------------------


def _end_of_run(tmp_path: Path, job_id: str, model_id: str, break_staging: bool, env: dict) -> SimpleNamespace:
    """Start and end a run with the real ServerEventHandler and PersistToS3AndCleanup (an evaluation-only run: no
    model persistor), optionally with a file where the staging folder goes; return what it logged and left."""
    platform = LocalPlatform(tmp_path / "flip")
    persist = PersistToS3AndCleanup(model_id, persistor_id="", flip=platform)
    handler = ServerEventHandler(model_id, flip=platform)
    components = {ComponentId.JSON_GENERATOR: ValidationJsonGenerator(), ComponentId.PERSIST_AND_CLEANUP: persist}
    (tmp_path / "server").mkdir()
    engine = ServerEngine(tmp_path / "server", components)
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    run = tmp_path / "server" / job_id
    run.mkdir()
    if break_staging:
        (run / RunFile.STAGING_DIR).write_text("a file where the staging folder goes")
    with environ(**env):
        for component in (persist, handler):
            component.handle_event(EventType.START_RUN, ctx)
        handler.handle_event(EventType.END_RUN, ctx)
    return SimpleNamespace(run=run, platform=platform, statuses=platform.read_statuses(model_id))


@pytest.mark.unit
def test_failure_before_pending_gives_true_advice(tmp_path, caplog):
    """Staging fails (a file where flip_upload/ goes), so no upload was recorded: the old handler still logged
    "finish with `flip upload --resume`", and that resume then found nothing. The advice now says what is true,
    and resume indeed has nothing to finish."""
    caplog.set_level(logging.INFO)
    model_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    end = _end_of_run(tmp_path, job_id, model_id, break_staging=True, env={})
    assert end.statuses[-1]["status"] == RunStatus.ERROR.value
    assert "results not uploaded" in end.statuses[-1]["reason"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not any("finish with `flip upload --resume" in m for m in errors), errors
    advice = next(m for m in errors if "no upload was recorded" in m)
    assert f"the run folder {end.run} keeps what the run wrote" in advice
    assert "`flip upload --resume` cannot finish this run" in advice
    assert not (end.run / RunFile.UPLOAD_PENDING).exists()
    assert (end.run / RunFile.METRICS).is_file()  # what it says is left is left
    with pytest.raises(UploadError, match="there is nothing to resume"):
        resume(end.run, load_settings(), log=lambda line: None)


@pytest.mark.s3
def test_failure_after_pending_advises_a_resume_that_works(tmp_path, weed, caplog):
    """The bucket is missing: the upload was recorded, so the advice is the resume command, and that command
    finishes the run once the cause is fixed (here: allowed to create the bucket)."""
    caplog.set_level(logging.INFO)
    bucket = f"missing-{uuid.uuid4().hex[:12]}"
    model_id, job_id = str(uuid.uuid4()), str(uuid.uuid4())
    env = {**weed.env, "FLIP_MODELS_BUCKET": bucket}
    end = _end_of_run(tmp_path, job_id, model_id, break_staging=False, env=env)
    assert end.statuses[-1]["status"] == RunStatus.ERROR.value
    assert f"bucket '{bucket}' does not exist" in end.statuses[-1]["reason"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"finish with `flip upload --resume {end.run}`" in m for m in errors), errors
    with environ(**env, FLIP_S3_CREATE_BUCKET="true"):
        resume(end.run, load_settings(), platform=end.platform, log=lambda line: None)
    assert end.platform.read_statuses(model_id)[-1]["status"] == RunStatus.RESULTS_UPLOADED.value
    manifest = verify_run(weed._client(), bucket, run_prefix(model_id, job_id))
    assert RunFile.METRICS in {o["key"] for o in manifest["objects"]}
    assert all(is_log_file(p.name) for p in end.run.iterdir())


# -- item 11: malformed manifests ----------------------------------------------------------------------------------


def _good_and_bad_run(weed, tmp_path: Path, damage) -> tuple[str, str]:
    """A model with a verified run ``good`` and a run ``bad`` whose manifest ``damage`` rewrote."""
    model_id = str(uuid.uuid4())
    client = weed._client()
    for run_id in ("good", "bad"):
        model = tmp_path / f"{run_id}.pt"
        torch.save({"w": torch.ones(2)}, model)
        upload_run(client, weed.bucket, run_prefix(model_id, run_id), {RunFile.GLOBAL_MODEL: model}, {})
    key = f"{model_id}/bad/{RunFile.MANIFEST}"
    manifest = json.loads(client.get_object(Bucket=weed.bucket, Key=key)["Body"].read())
    client.put_object(Bucket=weed.bucket, Key=key, Body=json.dumps(damage(manifest)).encode())
    return model_id, key


def _entry(manifest: dict, **changes) -> dict:
    entry = {**manifest["objects"][0], **changes}
    return {**manifest, "objects": [{k: v for k, v in entry.items() if v is not None}]}


MALFORMED = {
    # old code: AttributeError ('list' object has no attribute 'get')
    "a list": (lambda m: m["objects"], "expected a JSON object, got a list"),
    # old code: TypeError from ObjectEntry(**raw)
    "missing fields": (lambda m: _entry(m, s3_checksum=None), r"missing fields \['s3_checksum'\]"),
    "extra fields": (lambda m: _entry(m, evil=1), r"extra fields \['evil'\]"),
    # old code: ValueError from check_object_key, uncaught by the registry
    "../x key": (lambda m: _entry(m, key="../x"), r"object key '\.\./x' is invalid"),
    # old code: TypeError sorting 123 against the good run's string
    "non-string created": (lambda m: {**m, "created": 123}, "created must be a string, got 123"),
}


@pytest.mark.s3
@pytest.mark.parametrize("case", list(MALFORMED))
def test_models_list_survives_malformed_manifests(weed, tmp_path, capsys, case):
    """One run's malformed manifest stopped ``flip models list`` for every model. Now that run is listed as
    unverified with the reason, and the model's other run is still served."""
    damage, reason = MALFORMED[case]
    model_id, _ = _good_and_bad_run(weed, tmp_path, damage)
    registry = ModelRegistry(weed._client(), weed.bucket)
    runs = {r.run_id: r for r in registry.runs(model_id)}
    assert runs["good"].verified and not runs["bad"].verified
    assert f"{RunFile.MANIFEST} is not a valid manifest" in runs["bad"].problem
    assert re.search(reason, runs["bad"].problem), runs["bad"].problem
    assert registry.run(model_id).run_id == "good"
    assert registry.show(model_id)["runs"]  # shown too
    with environ(**weed.env):
        assert flip_cli(["models", "list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(model_id))
    assert "1 of 2" in line and "good" in line


@pytest.mark.s3
def test_empty_manifest_is_not_verified(weed, tmp_path):
    """``{"objects": []}`` (or a full manifest listing no object) verified in the old code: nothing to check
    counted as everything matching. A run that lists nothing is not verified, and never served."""
    for damage in (lambda m: {"objects": []}, lambda m: {**m, "objects": []}):
        model_id, _ = _good_and_bad_run(weed, tmp_path, damage)
        registry = ModelRegistry(weed._client(), weed.bucket)
        runs = {r.run_id: r for r in registry.runs(model_id)}
        assert not runs["bad"].verified
        assert "is not a valid manifest" in runs["bad"].problem
        with pytest.raises(RegistryError, match="run bad of model .* is not served"):
            registry.download(model_id, "bad", tmp_path / "x.pt")


@pytest.mark.unit
def test_object_key_with_a_trailing_newline_is_refused():
    """``$`` in the old key pattern matched before a trailing newline: ``'model.pt\\n'`` was a safe key."""
    with pytest.raises(ValueError, match="object key 'model.pt\\\\n' is invalid"):
        check_object_key("model.pt\n")


# -- item 12: downloads --------------------------------------------------------------------------------------------


def _one_run(weed, tmp_path: Path) -> tuple[str, dict]:
    model_id = str(uuid.uuid4())
    state = {"w": torch.arange(3.0)}
    model = tmp_path / "m.pt"
    torch.save(state, model)
    upload_run(weed._client(), weed.bucket, run_prefix(model_id, "job-1"), {RunFile.GLOBAL_MODEL: model}, {})
    return model_id, state


@pytest.mark.s3
def test_download_into_existing_dir_writes_file_name(weed, tmp_path, capsys):
    """``-o EXISTING_DIR``: the old code moved its temporary file into the folder (``DIR/.download-XXXX``) and
    printed only the folder. Now it writes ``DIR/<artifact's file name>`` and prints that path."""
    model_id, state = _one_run(weed, tmp_path)
    out = tmp_path / "models"
    out.mkdir()
    with environ(**weed.env):
        assert flip_cli(["models", "download", model_id, "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / RunFile.GLOBAL_MODEL)
    assert [p.name for p in out.iterdir()] == [RunFile.GLOBAL_MODEL]
    assert torch.equal(torch.load(out / RunFile.GLOBAL_MODEL, weights_only=True)["w"], state["w"])


class _DropGets:
    """A TCP proxy to the S3 server that drops every connection on which ``GET /<path>`` is sent (a network cut
    in the middle of a download); everything else passes."""

    def __init__(self, target_port: int, path: str):
        self.marker = f"GET /{path}".encode()
        self.target_port = target_port
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while data := source.recv(65536):
                if outbound and self.marker in data:
                    self.dropped += 1
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()


@pytest.mark.s3
def test_download_failure_leaves_no_temp_file(weed, tmp_path):
    """The read of the model fails (the connection drops on its GET): the old code left ``.download-XXXX`` beside
    the target. Now nothing is left."""
    model_id, _ = _one_run(weed, tmp_path)
    proxy = _DropGets(int(weed.endpoint.rsplit(":", 1)[1]), f"{weed.bucket}/{model_id}/job-1/{RunFile.GLOBAL_MODEL}")
    out = tmp_path / "out"
    out.mkdir()
    try:
        with environ(**{**weed.env, "AWS_ENDPOINT_URL_S3": proxy.endpoint, "AWS_MAX_ATTEMPTS": "2"}):
            registry = ModelRegistry(make_s3_client(), weed.bucket)
            with pytest.raises(StorageError, match=f"cannot read {RunFile.GLOBAL_MODEL} of run job-1"):
                registry.download(model_id, out=out / "model.pt")
    finally:
        proxy.close()
    assert proxy.dropped >= 1
    assert list(out.iterdir()) == []
