"""Hostile conditions at a site and in provisioning: what leaves a site, what its logs say, who can read its files.

Each test names, in its docstring, how it failed on the old code.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.logging.constants import is_log_streaming_allowed

from flip.cli import main as flip_cli
from flip.constants import FlipMeta, FlipTask
from flip.errors import PrivacyError
from flip.nvflare.components import CleanupImages, GaussianPrivacy, PercentilePrivacy, StagePercentilePrivacy
from flip.nvflare.executors import RUN_TRAINER
from flip.nvflare.utils import short_reason
from flip.privacy.percentile import percentile_filter
from flip.provisioning import project_config, render_project, site_privacy_policy
from flip.storage.weed import IDENTITIES_FILE, WeedS3
from tests.fakes import FakeEngine

# -- item 17: the S3 identities file is private from its creation on ------------------------------------------------

_WATCH: dict = {"path": None, "seen": {}}


def _audit(event: str, args) -> None:
    """Record each mode the watched file has at any audit event (with the first event seen at); idle: no cost."""
    path = _WATCH["path"]
    if path is None:
        return
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        return
    _WATCH["seen"].setdefault(oct(mode), event)


if not getattr(sys, "_flip_hostile_audit", False):  # an audit hook cannot be removed: add it once per process
    sys.addaudithook(_audit)
    sys._flip_hostile_audit = True


@pytest.mark.s3
def test_weed_identities_created_0600(tmp_path):
    """With a umask of 0, the old code wrote the file 0666 and chmod-ed it after: the audit hook saw the secret
    key's file readable by everyone at the ``os.chmod`` event (mode 0o666)."""
    server = WeedS3(bucket=None, root=tmp_path)
    identities = tmp_path / IDENTITIES_FILE
    old_umask = os.umask(0)
    _WATCH.update(path=str(identities), seen={})
    try:
        server.start()
    finally:
        _WATCH["path"] = None
        os.umask(old_umask)
    try:
        seen = _WATCH["seen"]
        assert seen, "the identities file was never observed"
        assert seen == {"0o600": seen.get("0o600")}, f"modes the file had (and the first event at each): {seen}"
        assert stat.S_IMODE(identities.stat().st_mode) == 0o600
        assert server.secret_key in identities.read_text()
        server._client().list_buckets()  # the server reads it: authentication works with these credentials
    finally:
        server.stop()


@pytest.mark.unit
def test_private_file_is_replaced_not_written_through(tmp_path):
    """A stale file (0644) or a planted symlink at the path is replaced by a new 0600 file; the symlink's target
    is never written (the old code's ``write_text`` followed it)."""
    from flip.files import write_private

    target = tmp_path / "elsewhere.txt"
    target.write_text("not yours")
    path = tmp_path / "secret.json"
    path.symlink_to(target)
    old_umask = os.umask(0)
    try:
        write_private(path, "key")
        assert not path.is_symlink() and path.read_text() == "key" and target.read_text() == "not yours"
        os.chmod(path, 0o644)
        write_private(path, "key2")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "key2"


# -- item 15: the site's privacy policy decides for every result that leaves -----------------------------------------


def _site_filter(cls=PercentilePrivacy):
    """The filter a provisioned site enforces, built from the privacy.json FlipSiteBuilder writes."""
    (spec,) = site_privacy_policy()["scopes"][0]["task_result_filters"]
    assert spec["path"] == "flip.nvflare.components.PercentilePrivacy"
    return cls(**spec["args"])


SITE_FILTERS = [
    pytest.param(lambda: _site_filter(PercentilePrivacy), id="PercentilePrivacy"),
    pytest.param(lambda: _site_filter(StagePercentilePrivacy), id="StagePercentilePrivacy"),
]
ALL_FILTERS = SITE_FILTERS + [pytest.param(lambda: GaussianPrivacy(noise_multiplier=1.0), id="GaussianPrivacy")]
TRAINING_TASKS = [FlipTask.TRAIN, FlipTask.SWAG, AppConstants.TASK_SUBMIT_MODEL, "some_new_task", None]


def _ctx(task: str | None) -> FLContext:
    fl_ctx = FLContext()
    if task is not None:
        fl_ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    return fl_ctx


def _diff(**arrays) -> DXO:
    return DXO(DataKind.WEIGHT_DIFF, data=arrays, meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1})


@pytest.mark.unit
@pytest.mark.parametrize("make", SITE_FILTERS)
@pytest.mark.parametrize("task", TRAINING_TASKS)
def test_site_filter_refuses_metrics_dxo_on_train_task(make, task):
    """The old filter let a METRICS DXO leave a training task unchanged (only WEIGHT_DIFF was its business), e.g.
    per-patient numbers a trainer put in a METRICS result. An unknown or missing task name counts as training."""
    metrics = DXO(DataKind.METRICS, data={"loss": 0.5, "accuracy": 0.9}).to_shareable()
    with pytest.raises(PrivacyError, match=rf"refuses a METRICS result for task {task!r}: only a WEIGHT_DIFF"):
        make().process(metrics, _ctx(task))


@pytest.mark.unit
@pytest.mark.parametrize("make", SITE_FILTERS)
def test_site_filter_refuses_custom_kind(make):
    """The old filter passed every kind but WEIGHT_DIFF/WEIGHTS unchanged: a custom kind or APP_DEFINED carried
    raw arrays off site."""
    for kind in ("PATIENT_EMBEDDINGS", DataKind.APP_DEFINED, DataKind.STATISTICS, DataKind.FL_MODEL):
        result = DXO(kind, data={"x": np.arange(4.0)}).to_shareable()
        with pytest.raises(PrivacyError, match=rf"refuses an? {getattr(kind, 'value', kind)} result for task 'train'"):
            make().process(result, _ctx(FlipTask.TRAIN))


@pytest.mark.unit
@pytest.mark.parametrize("make", ALL_FILTERS)
def test_site_filter_refuses_plain_shareable_with_arrays(make):
    """Every filter (GaussianPrivacy too) passed a Shareable that is not a DXO untouched: arrays under any key, or
    beside a filtered DXO, or in a header, left the site unfiltered."""
    plain = Shareable()
    plain["weights"] = {"w": np.ones(8)}
    with pytest.raises(PrivacyError, match=r"refuses a non-DXO result for task 'train': only a DXO may leave"):
        make().process(plain, _ctx(FlipTask.TRAIN))
    beside = _diff(w=np.ones(8)).to_shareable()
    beside["raw"] = np.ones(8)
    with pytest.raises(PrivacyError, match=r"a DXO with extra entries \['raw'\]"):
        make().process(beside, _ctx(FlipTask.TRAIN))
    in_header = _diff(w=np.ones(8)).to_shareable()
    in_header.set_header("extra", {"w": np.ones(8)})
    with pytest.raises(PrivacyError, match="refuses the result for task 'train': headers must not carry arrays"):
        make().process(in_header, _ctx(FlipTask.TRAIN))
    in_meta = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(8)}, meta={"stash": np.ones(8)}).to_shareable()
    with pytest.raises(PrivacyError, match="DXO meta must not carry arrays"):
        make().process(in_meta, _ctx(FlipTask.TRAIN))
    not_array = DXO(DataKind.WEIGHT_DIFF, data={"w": np.ones(8), "note": "patient 42"}).to_shareable()
    with pytest.raises(PrivacyError, match="entry 'note' is not an array"):
        make().process(not_array, _ctx(FlipTask.TRAIN))
    failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
    failed["weights"] = np.ones(8)
    with pytest.raises(
        PrivacyError,
        match=r"refuses an EXECUTION_EXCEPTION error result .*: an error reply must "
        r"carry no data, it holds \['weights'\]",
    ):
        make().process(failed, _ctx(FlipTask.TRAIN))
    with pytest.raises(PrivacyError, match="refuses an empty result for task 'train'"):
        make().process(Shareable(), _ctx(FlipTask.TRAIN))


@pytest.mark.unit
@pytest.mark.parametrize("make", ALL_FILTERS)
@pytest.mark.parametrize("task", [FlipTask.VALIDATE, FlipTask.EVALUATE, FlipTask.INIT_TRAINING])
def test_site_filter_refuses_weights_on_validate_task(make, task):
    """A local model must never leave for a validation task. The old filter filtered a WEIGHT_DIFF and sent it
    (and passed plain arrays) whatever the task was."""
    for kind in (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF):
        result = DXO(kind, data={"w": np.full(8, 0.5)}).to_shareable()
        with pytest.raises(PrivacyError, match=rf"refuses a {kind.value} result for task {task!r}: only METRICS"):
            make().process(result, _ctx(task))
    plain = Shareable()
    plain["model"] = np.ones(4)
    with pytest.raises(PrivacyError, match="refuses a non-DXO result"):
        make().process(plain, _ctx(task))
    scores = DXO(DataKind.METRICS, data={"accuracy": np.ones(4)}).to_shareable()
    with pytest.raises(PrivacyError, match="metrics must be named finite numbers"):
        make().process(scores, _ctx(task))


@pytest.mark.unit
@pytest.mark.parametrize("make", ALL_FILTERS)
def test_site_filter_passes_metrics_on_validate_task(make):
    """Scores of the server's model, an empty reply and an error without data leave a non-training task as they
    are. The old GaussianPrivacy refused every METRICS result, so a site that put it in its privacy scope could
    not validate at all."""
    for task in (FlipTask.VALIDATE, FlipTask.EVALUATE, AppConstants.TASK_VALIDATION):
        scores = DXO(DataKind.METRICS, data={"accuracy": 0.875, "loss": 0.31, "num_samples": 64}).to_shareable()
        out = make().process(scores, _ctx(task))
        assert from_shareable(out).data == {"accuracy": 0.875, "loss": 0.31, "num_samples": 64}
    assert make().process(make_reply(ReturnCode.OK), _ctx(FlipTask.INIT_TRAINING)).get_return_code() == ReturnCode.OK
    for task in (FlipTask.TRAIN, FlipTask.VALIDATE):
        failed = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        failed.set_header("flip_error_reason", "custom/trainer.py: FLIP_TRAINER.train raised KeyError")
        assert make().process(failed, _ctx(task)) is failed
    # issue 16: a non-finite score is dropped from what leaves (FLIP's validators send NaN), the rest kept
    nan = DXO(DataKind.METRICS, data={"accuracy": float("nan"), "loss": 0.3}).to_shareable()
    assert from_shareable(make().process(nan, _ctx(FlipTask.VALIDATE))).data == {"loss": 0.3}


@pytest.mark.unit
@pytest.mark.parametrize("make", SITE_FILTERS)
def test_site_filter_filters_swag_collection_leaves(make):
    """SWAG's moments (a COLLECTION of WEIGHT_DIFF) have each leaf filtered with its own threshold; a COLLECTION
    holding anything else is refused. The old filter passed a METRICS (or custom) leaf of a COLLECTION unchanged."""
    rng = np.random.default_rng(0)
    mean, second = rng.normal(0, 0.02, 200), rng.normal(0, 0.5, 200)
    parts = {"mean": _diff(w=mean.copy()), "second": _diff(w=second.copy())}
    result = DXO(DataKind.COLLECTION, data=parts, meta={"flip_num_samples": 10}).to_shareable()
    out = from_shareable(make().process(result, _ctx(FlipTask.SWAG)))
    for name, original in (("mean", mean), ("second", second)):
        expected, _ = percentile_filter({"w": original.copy()}, 10, 0.01)
        np.testing.assert_array_equal(out.data[name].data["w"], expected["w"])
        assert np.abs(out.data[name].data["w"]).max() <= 0.01
    for leaf in (
        DXO(DataKind.METRICS, data={"loss": 0.1}),
        DXO("CUSTOM", data={"x": np.ones(3)}),
        DXO(DataKind.WEIGHTS, data={"w": np.ones(3)}),
    ):
        mixed = DXO(DataKind.COLLECTION, data={"mean": _diff(w=np.ones(3)), "extra": leaf}).to_shareable()
        with pytest.raises(
            PrivacyError,
            match=rf"refuses a {getattr(leaf.data_kind, 'value', leaf.data_kind)} "
            r"result for task 'swag'",
        ):
            make().process(mixed, _ctx(FlipTask.SWAG))


# -- item 16: a site's logs stay on site unless it opts in; its error lines carry the short reason only ---------------


def _streams_logs(kit: Path) -> bool:
    """What NVFlare itself decides for the kit: its own gate (JobLogStreamer, SiteLogStreamer) reads the kit."""
    data = json.loads((kit / "local" / "resources.json.default").read_text())
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.WORKSPACE_ROOT, str(kit), private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, kit.name, private=True, sticky=False)
    allowed = is_log_streaming_allowed(fl_ctx)
    assert allowed is data["allow_log_streaming"]
    return allowed


@pytest.mark.e2e
def test_provisioned_site_does_not_stream_logs(tmp_path):
    """NVFlare's provisioning writes ``allow_log_streaming: true`` for every site (its SiteLogStreamer then sends
    each job's error_log.txt to the server); the old FlipSiteBuilder left it so."""
    assert flip_cli(["provision", "--sites", "hospital-a,hospital-b", "--out", str(tmp_path)]) == 0
    prod = tmp_path / "workspace" / "flip" / "prod_00"
    for site in ("hospital-a", "hospital-b"):
        assert _streams_logs(prod / site) is False
    assert '"allow_log_streaming": false' in (tmp_path / "project.yml").read_text()  # the choice is visible


@pytest.mark.e2e
def test_provisioned_site_streams_logs_only_if_it_opts_in(tmp_path):
    """Opt-in: every site with ``flip provision --allow-log-streaming``; one site with its own property in
    project.yml (the others keep theirs on site). The old builder had no option: all sites streamed."""
    every = tmp_path / "every"
    assert flip_cli(["provision", "--sites", "2", "--allow-log-streaming", "--out", str(every)]) == 0
    prod = every / "workspace" / "flip" / "prod_00"
    assert [_streams_logs(prod / s) for s in ("site-1", "site-2")] == [True, True]

    one = tmp_path / "one"
    one.mkdir()
    config = project_config(["hospital-a", "hospital-b"])
    for participant in config["participants"]:
        if participant["name"] == "hospital-b":
            participant["allow_log_streaming"] = True
    (one / "project.yml").write_text(render_project(config))
    nvflare = str(Path(sys.executable).with_name("nvflare"))
    done = subprocess.run(
        [nvflare, "provision", "-p", "project.yml", "-w", "workspace"],
        cwd=one,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    prod = one / "workspace" / "flip" / "prod_00"
    assert (_streams_logs(prod / "hospital-a"), _streams_logs(prod / "hospital-b")) == (False, True)
    with pytest.raises(ValueError, match="allow_log_streaming must be True or False, got 'yes'"):
        project_config(["a"], allow_log_streaming="yes")


SECRET = "hunter2"
PATIENT = "jane-doe"


def _site_ctx(tmp_path: Path, job_id: str) -> FLContext:
    (tmp_path / "ws").mkdir(exist_ok=True)
    engine = FakeEngine(tmp_path / "ws", "site-1")
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=True, sticky=False)
    return fl_ctx


def _records(caplog, level):
    return [r for r in caplog.records if r.levelno == level or (level == logging.ERROR and r.levelno > level)]


@pytest.mark.unit
def test_site_error_log_is_short_reason_only(tmp_path, monkeypatch, caplog):
    """A site's error-level lines may be streamed off site. The old RUN_TRAINER logged the whole multi-line
    reason (with a secret) and a full traceback at error level; the old CleanupImages logged ``{exc}``, whose text
    names the image folder (a patient's name in this test)."""
    local = tmp_path / "flip"
    (local / "cohorts" / "site-1").mkdir(parents=True)
    (local / "cohorts" / "site-1" / "0.png").write_bytes(b"png")
    monkeypatch.setenv("FLIP_ENV", "dev")
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(local))

    # the user's trainer fails to import with a message that holds a secret and, on its second line, a patient path
    fl_ctx = _site_ctx(tmp_path, "job-1")
    custom = Path(fl_ctx.get_engine().get_workspace().get_app_custom_dir("job-1"))
    custom.mkdir(parents=True)
    (custom / "config.json").write_text("{}")
    (custom / "trainer.py").write_text(
        "raise ImportError('no module dicom_reader, "
        f"password={SECRET} set\\n  while reading /data/{PATIENT}/scan.dcm')\n"
    )
    weights = DXO(DataKind.WEIGHTS, data={"w": np.ones(2, dtype=np.float32)}).to_shareable()
    with caplog.at_level(logging.DEBUG):
        reply = RUN_TRAINER().execute(FlipTask.TRAIN, weights, fl_ctx, Signal())
    reason = reply.get_header(FlipMeta.ERROR_REASON)
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert (
        reason
        == ("custom/trainer.py could not be imported: ImportError: no module dicom_reader, password=*** set")
        == short_reason(reason)
    )
    errors = [r.getMessage() for r in _records(caplog, logging.ERROR)]
    assert len(errors) == 1 and errors[0].endswith(f"train failed: {reason}"), errors
    debug = "\n".join(r.getMessage() for r in _records(caplog, logging.DEBUG))
    assert f"/data/{PATIENT}/scan.dcm" in debug and "Traceback" in debug  # the detail stays, at debug level
    assert SECRET not in caplog.text  # at no level

    # the run's image folder cannot be deleted: the OSError's text names its path (here, with a patient's name)
    caplog.clear()
    local = tmp_path / f"store-of-{PATIENT}"
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(local))
    images = local / "images" / "site-1" / "job-2"
    images.parent.mkdir(parents=True)
    images.write_text("not a folder")
    fl_ctx = _site_ctx(tmp_path, "job-2")
    cleanup = CleanupImages()
    with caplog.at_level(logging.DEBUG):
        reply = cleanup.execute(FlipTask.INIT_TRAINING, Shareable(), fl_ctx, Signal())
        cleanup.handle_event(EventType.END_RUN, fl_ctx)
    assert reply.get_header(FlipMeta.ERROR_REASON) == "cannot clean the run's images (NotADirectoryError)"
    errors = [r.getMessage() for r in _records(caplog, logging.ERROR)]
    assert len(errors) == 2 and all(e.endswith("cannot clean the run's images (NotADirectoryError)") for e in errors)
    assert not any(PATIENT in e for e in errors), errors
    assert PATIENT in "\n".join(r.getMessage() for r in _records(caplog, logging.DEBUG))


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, leaked",
    [
        ("no cohort for site 'site-1': expected images under /data/images/PATIENT-0042", "PATIENT-0042"),
        ("cannot read ~/cohorts/PATIENT-0042.csv", "PATIENT-0042"),
        ("FileNotFoundError: [Errno 2] No such file: '/mnt/pacs/PATIENT-0042/1.dcm'", "PATIENT-0042"),
    ],
)
def test_reason_sent_off_site_carries_no_absolute_path(text, leaked):
    """A folder or file name can name a patient: the one line a site sends keeps no absolute path (before: the
    first line went as it was)."""
    reason = short_reason(text)
    assert leaked not in reason and "<path>" in reason, reason


@pytest.mark.unit
def test_reason_keeps_relative_names_and_urls():
    assert short_reason("custom/trainer.py not found") == "custom/trainer.py not found"
    assert short_reason("verified at s3://flip-models/m/r/") == "verified at s3://flip-models/m/r/"
