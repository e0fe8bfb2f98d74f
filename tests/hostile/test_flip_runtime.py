"""Hostile input to the runtime that runs FLIP apps (issue 16, part B): broken apps, what an app returns, integer
entries in updates, metrics events, nested metrics, evaluation checkpoints, arguments.

Before this work the executors had no FLIP contract (an app's ``FLIP_TRAINER(Executor)`` was built as
``FLIP_TRAINER(config)`` and failed with a TypeError naming nothing useful), a site's metrics event reached no
handler on the server, every integer entry made the privacy filter refuse the whole update, nested metrics were
refused at the site and dropped at the server, and there was no FlipEvaluation: each test below names what the old
code did with its input.
"""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from flip import run_metrics, site_messages
from flip.constants import FlipEvents, FlipMeta, FlipTask
from flip.errors import PrivacyError, UserCodeError
from flip.methods.weighted import check_update, weighted_mean
from flip.metrics import MAX_NESTED_NUMBERS, clean_nested_metrics, to_number
from flip.nvflare.components import GaussianPrivacy, PercentilePrivacy
from flip.nvflare.controllers import FlipEvaluation, MultiStageScatterAndGather
from flip.nvflare.controllers.flip_evaluation import load_evaluation_models
from flip.nvflare.executors import RUN_EVALUATOR, RUN_MONAI_FL_TRAINER, RUN_TRAINER, RUN_VALIDATOR
from flip.nvflare.result_policy import is_training_task
from tests import flip_runtime_apps as apps
from tests.hostile.test_server import warnings_naming
from tests.unit.test_flip_runtime import (
    EVALUATION_CONFIG,
    AnsweredFlipEvaluation,
    Site,
    _server_app,
    global_weights,
    make_server,
    train_task,
)

pytestmark = pytest.mark.unit

PATIENT = "jane-doe-0042"


@pytest.fixture
def flip_env(tmp_path, monkeypatch):
    """Dev platform with one cohort for every site (DEV_DATAFRAME / DEV_IMAGES_DIR)."""
    for var in ("LOCAL_DEV", "FLIP_SITE_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    csv, images = apps.write_cohort(tmp_path / "data", 2)
    monkeypatch.setenv("DEV_DATAFRAME", str(csv))
    monkeypatch.setenv("DEV_IMAGES_DIR", str(images))
    apps.forget_app_modules()
    yield csv
    apps.forget_app_modules()


NO_FLIP_TRAINER = """
from nvflare.apis.executor import Executor


class Trainer(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        raise NotImplementedError
"""

RAISING_CONSTRUCTOR = f"""
from nvflare.apis.executor import Executor


class FLIP_TRAINER(Executor):
    def __init__(self, train_task_name="train", submit_model_task_name="submit_model", exclude_vars=None,
                 project_id="", query=""):
        super().__init__()
        raise ValueError("no images for patient {PATIENT} under /data/{PATIENT}")

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        raise NotImplementedError
"""


def _records(caplog, level):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


@pytest.mark.parametrize("case", ["no FLIP_TRAINER", "constructor raises", "no accession_id column"])
def test_broken_flip_app_fails_with_a_short_reason_naming_the_cause(tmp_path, flip_env, caplog, case):
    """A wrong app fails the task with one short line naming the file and the cause; its own message (a patient's
    name here) and the traceback stay in the site's debug log; the server names the site in the run's ERROR.
    Before: no FLIP contract, so FLIP_TRAINER(Executor) was called as FLIP_TRAINER(config): "FLIP_TRAINER(config)
    raised TypeError (the constructor must accept the config dict)" whatever was wrong."""
    caplog.set_level(logging.DEBUG)
    site = Site(tmp_path, "site-1")
    trainer = {
        "no FLIP_TRAINER": NO_FLIP_TRAINER,
        "constructor raises": RAISING_CONSTRUCTOR,
        "no accession_id column": apps.EXECUTOR_TRAINER,
    }[case]
    apps.write_app(site.custom, trainer=trainer)
    if case == "no accession_id column":
        flip_env.write_text("patient_id,label\nACC0000,0\n")
    reply = RUN_TRAINER().execute(FlipTask.TRAIN, train_task(global_weights()), site.ctx(FlipTask.TRAIN), Signal())
    reason = reply.get_header(FlipMeta.ERROR_REASON)
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    expected = {
        "no FLIP_TRAINER": "custom/trainer.py does not define FLIP_TRAINER: expected class FLIP_TRAINER with "
        "method(s) train",
        "constructor raises": "custom/trainer.py: FLIP_TRAINER(train_task_name=..., submit_model_task_name=..., "
        "exclude_vars=..., project_id=..., query=...) raised ValueError (custom/trainer.py "
        "line 8)",
        "no accession_id column": "raised ValueError: the dev dataframe <path> has no 'accession_id' column",
    }[case]
    assert expected in reason, reason
    errors = _records(caplog, logging.ERROR)
    assert PATIENT not in reason and not any(PATIENT in e or "Traceback" in e for e in errors), errors
    if case == "constructor raises":
        assert PATIENT in "\n".join(_records(caplog, logging.DEBUG))  # the detail stays at the site, debug level

    server = make_server(tmp_path)
    server.fire(EventType.START_RUN)
    server.fire(
        EventType.BEFORE_PROCESS_SUBMISSION,
        "site-1",
        **{FLContextKey.TASK_RESULT: reply, FLContextKey.TASK_NAME: FlipTask.TRAIN},
    )
    assert server.handler._failure_reason() == f"site site-1: {reason}"


def test_flip_apps_own_error_reply_keeps_only_its_code(tmp_path, flip_env):
    """A FLIP app that catches its own exception and replies with it (FLIP's style: a traceback in the header
    "exception") sends only the return code and a short reason of ours. Before: no FLIP contract (TypeError)."""
    site = Site(tmp_path, "site-1")
    apps.write_app(
        site.custom,
        trainer=f"""
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply


class FLIP_TRAINER(Executor):
    def __init__(self, **kwargs):
        super().__init__()

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header("exception", "Traceback ...\\n  File /data/{PATIENT}/scan.dcm")
        return reply
""",
    )
    reply = RUN_TRAINER().execute(FlipTask.TRAIN, train_task(global_weights()), site.ctx(FlipTask.TRAIN), Signal())
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION
    assert reply.get_header("exception") is None and PATIENT not in str(dict(reply))
    assert reply.get_header(FlipMeta.ERROR_REASON) == (
        "custom/trainer.py: FLIP_TRAINER.execute('train') replied EXECUTION_EXCEPTION"
    )


@pytest.mark.parametrize(
    "metrics, entry",
    [
        ({"accuracy": 0.5, "note": f"patient {PATIENT}"}, "entry 'note' is a str"),
        ({"accuracy": 0.5, "confusion": "np.eye(2)"}, "entry 'confusion' is a ndarray"),
        ({"per_class": {"a": [0.1, b"raw"]}}, "entry 'per_class.a[1]' is a bytes"),
    ],
)
def test_flip_app_metrics_that_are_not_numbers_fail_the_task(tmp_path, flip_env, metrics, entry):
    """Only numbers (in dicts and lists) leave a site as metrics: anything else fails the task naming the entry,
    never its value. Before: no FLIP contract (TypeError)."""
    source = repr(metrics).replace("'np.eye(2)'", "np.eye(2)")
    site = Site(tmp_path, "site-1")
    apps.write_app(
        site.custom,
        validator=f"""
import numpy as np
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.executor import Executor


class FLIP_VALIDATOR(Executor):
    def __init__(self, **kwargs):
        super().__init__()

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        return DXO(data_kind=DataKind.METRICS, data={source}).to_shareable()
""",
    )
    reply = RUN_VALIDATOR().execute(
        FlipTask.VALIDATE, train_task(global_weights()), site.ctx(FlipTask.VALIDATE), Signal()
    )
    reason = reply.get_header(FlipMeta.ERROR_REASON)
    assert reply.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and entry in reason, reason
    assert PATIENT not in reason


def test_monai_executor_names_the_contract_it_needs(tmp_path, flip_env):
    """RUN_MONAI_FL_TRAINER given an Executor-style app says what it expected (FLIP's adapter failed calling
    initialize on it, and said nothing off-site)."""
    site = Site(tmp_path, "site-1")
    apps.write_app(site.custom, trainer=apps.EXECUTOR_TRAINER)
    reply = RUN_MONAI_FL_TRAINER().execute(
        FlipTask.TRAIN, train_task(global_weights()), site.ctx(FlipTask.TRAIN), Signal()
    )
    assert reply.get_header(FlipMeta.ERROR_REASON) in (
        "custom/trainer.py: class FLIP_TRAINER has no method initialize(): expected class FLIP_TRAINER with "
        "method(s) initialize, train, get_weights",
        "custom/trainer.py: FLIP_TRAINER must subclass MONAI's ClientAlgo (monai.fl.client.ClientAlgo) for "
        "RUN_MONAI_FL_TRAINER",
    )


# -- integer entries --------------------------------------------------------------------------------------------
def _train_ctx() -> FLContext:
    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_NAME, FlipTask.TRAIN, private=True, sticky=False)
    return ctx


def _update(**entries) -> Shareable:
    return DXO(
        DataKind.WEIGHT_DIFF,
        data={"w": np.full(8, 0.5, np.float32), **entries},
        meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1},
    ).to_shareable()


def test_only_integer_counters_or_unchanged_buffers_pass_the_percentile_filter():
    """A 0-d counter (num_batches_tracked) or an unchanged integer buffer passes; an integer array that changed
    could carry anything and is refused, naming it. Before: every integer entry refused the whole update, so no
    FLIP app with BatchNorm could train."""
    out = from_shareable(
        PercentilePrivacy().process(_update(steps=np.array(3, np.int64), index=np.zeros(5, np.int64)), _train_ctx())
    )
    assert int(out.data["steps"]) == 3 and not out.data["index"].any()
    assert out.get_meta_prop(FlipMeta.PRIVACY)[0]["integer_entries"] == 2
    with pytest.raises(PrivacyError, match=r"update entry 'pixels' is an integer array of shape \(4,\) that changed"):
        PercentilePrivacy().process(_update(pixels=np.array([12, 200, 31, 7], np.int32)), _train_ctx())
    with pytest.raises(PrivacyError, match="update entry 'flags' has dtype bool"):
        PercentilePrivacy().process(_update(flags=np.array([True, False])), _train_ctx())


def test_gaussian_privacy_withholds_every_integer_entry(tmp_path):
    """Noise cannot be added to an integer entry, so under DP none leaves (the server keeps its own value); the
    annotation says how many were withheld. Before: the whole update was refused."""
    ctx = _train_ctx()
    from tests.unit.conftest import FakeEngine

    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path, "site-1"), private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    (tmp_path / "job-1").mkdir()
    out = from_shareable(
        GaussianPrivacy(noise_multiplier=1.0).process(
            _update(steps=np.array(3, np.int64), pixels=np.array([12, 200], np.int32)), ctx
        )
    )
    assert list(out.data) == ["w"] and out.get_meta_prop(FlipMeta.PRIVACY)[0]["integer_entries_withheld"] == 2


GLOBAL = {"w": np.ones(2, np.float32), "bn.num_batches_tracked": np.array(10, np.int64)}


@pytest.mark.parametrize(
    "update, reason",
    [
        ({"bn.num_batches_tracked": np.array(1.5)}, "has dtype float64, the global model's is int64 (an integer)"),
        ({"w": np.array([1, 2], np.int64)}, "parameter 'w' has dtype int64, expected floating point"),
        ({"bn.num_batches_tracked": np.array(2**63 - 5, np.int64)}, "would leave the range of int64"),
    ],
)
def test_aggregator_checks_integer_entries(update, reason):
    """An integer entry is taken only where the global entry is an integer, and only if the global value stays in
    its dtype (int64 wraps silently). Before: every integer entry was excluded ("expected floating point")."""
    assert reason in check_update(update, GLOBAL, 10)
    assert check_update({"bn.num_batches_tracked": np.array(4, np.int64)}, GLOBAL, 10) is None
    mean = weighted_mean([({"n": np.array(3, np.int64)}, 3), ({"n": np.array(2, np.int64)}, 2)])
    assert int(mean["n"]) == 3 and mean["n"].dtype == np.int64  # 2.6 rounds to 3 (a cast alone gives 2)


# -- metrics events ---------------------------------------------------------------------------------------------
def _metric(origin: str, sender: str | None, label="TRAIN_LOSS", value=0.5) -> Shareable:
    event = DXO(DataKind.METRICS, data={"label": label, "value": value, "round": 1}).to_shareable()
    event.set_header(FedEventHeader.ORIGIN, origin)
    if sender:
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, sender, private=False, sticky=False)
        event.set_peer_props(peer.get_all_public_props())
    return event


def test_a_metric_is_recorded_under_its_senders_name(tmp_path, caplog):
    """A site cannot record metrics under another site's name: the connection's identity wins over the event's
    origin header (before: no server handler recorded metrics events at all)."""
    caplog.set_level(logging.INFO)
    server = make_server(tmp_path)
    server.fire(EventType.START_RUN)
    server.fire(FlipEvents.SEND_RESULT, **{FLContextKey.EVENT_DATA: _metric("site-2", "site-1")})
    assert server.handler.metrics.flip_metrics == {1: {"site-1": {"TRAIN_LOSS": [0.5]}}}
    assert warnings_naming(caplog, "site-1", "'site-2'")


def test_metrics_events_are_bounded_per_run(tmp_path, caplog, monkeypatch):
    """A site sending metrics without end cannot grow the server's memory or metrics.json without bound: past the
    run's limit values are counted, not kept, with one warning (before: no handler)."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(run_metrics, "MAX_FLIP_METRIC_VALUES", 3)
    server = make_server(tmp_path)
    server.fire(EventType.START_RUN)
    for i in range(5):
        server.fire(FlipEvents.SEND_RESULT, **{FLContextKey.EVENT_DATA: _metric("site-1", None, value=float(i))})
    document = server.handler.metrics.document()
    assert document["flip_metrics"] == [{"round": 1, "sites": {"site-1": {"TRAIN_LOSS": [0.0, 1.0, 2.0]}}}]
    assert document["flip_metrics_dropped"] == 2
    assert len(warnings_naming(caplog, "limit of 3 values")) == 1


# -- nested metrics ---------------------------------------------------------------------------------------------
def _deep(levels: int):
    value = 0.5
    for _ in range(levels):
        value = {"x": value}
    return value


@pytest.mark.parametrize(
    "metrics, problem",
    [
        (_deep(9), "nested deeper than 8 levels"),
        ({"values": [0.1] * (MAX_NESTED_NUMBERS + 1)}, f"more than {MAX_NESTED_NUMBERS} numbers"),
        ({"a\nb": 0.5}, "keys are 1-128 printable characters"),
        ({"x" * 129: 0.5}, "keys are 1-128 printable characters"),
        ({"ok": {3: 0.5}}, "a key of type int"),
        ({"flag": True}, "entry 'flag' is a bool"),
    ],
)
def test_nested_metrics_are_bounded_at_the_site_and_the_server(metrics, problem):
    """Nested metrics are bounded in depth (8), numbers (10,000) and key form: the site's privacy filter refuses
    them (fail closed), the server drops what breaks the rule. Before: any nesting was refused, so FLIP's validators
    could not report at all."""
    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_NAME, FlipTask.VALIDATE, private=True, sticky=False)
    with pytest.raises(PrivacyError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        PercentilePrivacy().process(DXO(DataKind.METRICS, data=metrics).to_shareable(), ctx)
    kept, dropped = site_messages.nested_metrics(metrics)
    assert any(problem in d for d in dropped) and not _numbers(kept)


def _numbers(value) -> int:
    if isinstance(value, dict):
        return sum(_numbers(v) for v in value.values())
    if isinstance(value, list):
        return sum(_numbers(v) for v in value)
    return 0 if value is None else 1


def test_zero_dim_arrays_are_numbers_and_flip_task_names_are_scores_only():
    """A 0-d numpy array (what MONAI metrics often return) is a number; FLIP's evaluation and validate_<stage> tasks
    may send scores, never a model (before: 'evaluation' counted as training, so its METRICS were refused)."""
    assert to_number(np.array(0.25)) == 0.25 and to_number(np.array([0.25])) is None
    assert to_number(np.array(True)) is None
    assert clean_nested_metrics({"dice": np.array(0.5, np.float32)}).data == {"dice": 0.5}
    for task in ("evaluation", "validate_ae", "validate_dm", "post_validation"):
        assert not is_training_task(task)
    for task in ("train_ae", "validate_", "validate_a b", "submit_model"):
        assert is_training_task(task)
    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_NAME, "evaluation", private=True, sticky=False)
    with pytest.raises(PrivacyError, match="refuses a WEIGHTS result for task 'evaluation'"):
        PercentilePrivacy().process(DXO(DataKind.WEIGHTS, data={"w": np.ones(2)}).to_shareable(), ctx)


# -- FlipEvaluation's checkpoints -------------------------------------------------------------------------------
class _Code:
    """Not a tensor: pickling it stores a reference to code, which weights_only refuses to load."""


@pytest.mark.parametrize(
    "fault, message",
    [
        ("outside", "is invalid"),
        ("pickle", "cannot be loaded with weights_only=True (UnpicklingError)"),
        (
            "mismatch",
            "does not fit models.model_paths['net']: the model's entry 'bn.num_batches_tracked' is not in "
            "the checkpoint",
        ),
        ("wrong path", "models.model_paths['nope'] is not a torch.nn.Module"),
        ("missing", "checkpoint custom/first.pt not found"),
        ("no models", 'custom/config.json must hold "models"'),
    ],
)
def test_flip_evaluation_refuses_unsafe_or_unfitting_checkpoints(tmp_path, flip_env, fault, message):
    """A checkpoint outside the app, one that needs code to load, one that does not fit its model, a model path
    models.py lacks, a missing checkpoint or no "models": the run ends in ERROR naming it, and nothing is sent
    to a site. (FLIP's locator only logged a strict-load error and sent the model anyway.)"""
    server = make_server(tmp_path)
    custom = server.run_dir / "app_server" / "custom"
    states = _server_app(custom)
    config = json.loads(json.dumps(EVALUATION_CONFIG))
    if fault == "outside":
        config["models"]["first"]["checkpoint"] = "../first.pt"
    elif fault == "pickle":
        (custom / "first.pt").write_bytes(pickle.dumps({"w": _Code()}))
    elif fault == "mismatch":
        torch.save({k: v for k, v in states["first"].items() if k != "bn.num_batches_tracked"}, custom / "first.pt")
    elif fault == "wrong path":
        config["models"]["first"]["path"] = "nope"
    elif fault == "missing":
        (custom / "first.pt").unlink()
    else:
        config.pop("models")
    (custom / "config.json").write_text(json.dumps(config))
    apps.forget_app_modules()
    with pytest.raises(
        UserCodeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
        load_evaluation_models(custom)
    server.fire(EventType.START_RUN)
    workflow = AnsweredFlipEvaluation(lambda site, task: pytest.fail("a task was sent"))
    workflow.control_flow(Signal(), server.ctx)
    assert server.handler.fatal_error and message.split(" (")[0] in server.handler.error_reason


# -- arguments --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: RUN_TRAINER(train_task_name=""), "train_task_name must be a component id"),
        (lambda: RUN_TRAINER(train_task_name="train\n"), "train_task_name must be a component id"),
        (lambda: RUN_TRAINER(project_id=3), "project_id must be a string, got 3"),
        (lambda: RUN_TRAINER(project_id="p\n1"), "project_id must not contain control characters"),
        (lambda: RUN_TRAINER(query=None), "query must be a string of at most 100000 characters, got NoneType"),
        (lambda: RUN_TRAINER(exclude_vars="("), "exclude_vars must be a regular expression or None, got '\\('"),
        (lambda: RUN_TRAINER(exclude_vars=[""]), "exclude_vars must be None, a regular expression or a list of names"),
        (lambda: RUN_EVALUATOR(evaluate_task_name="a b"), "evaluate_task_name must be a component id"),
        (lambda: RUN_VALIDATOR(validate_task_name=None), "validate_task_name must be a component id"),
        (lambda: FlipEvaluation(min_clients=0), "min_clients must be an integer >= 1, got 0"),
        (lambda: FlipEvaluation(evaluate_task_name=""), "evaluate_task_name must be a component id"),
        (
            lambda: MultiStageScatterAndGather(stages=[{"name": "ae", "num_rounds": 1, "train_task_name": "x y"}]),
            r"stages\[0\].train_task_name must be a component id",
        ),
        (
            lambda: MultiStageScatterAndGather(stages=[{"name": "ae", "num_rounds": 1, "task": "x"}]),
            r"stages\[0\] must be \{'name': ..., 'num_rounds': ...\} \(and optionally 'train_task_name'\)",
        ),
    ],
)
def test_runtime_arguments_are_checked_naming_them(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_an_accession_id_in_flips_message_never_leaves_the_site(tmp_path, flip_env, caplog):
    """flip's own messages go into the short reason (they name rules, not data), except the refusal of an unsafe
    accession id, which names it: only its type leaves. Before this rule (describe_failure including every message
    flip raised), the reason sent to the server held the patient's accession id."""
    caplog.set_level(logging.DEBUG)
    site = Site(tmp_path, "site-1")
    apps.write_app(
        site.custom,
        trainer=f"""
from nvflare.apis.executor import Executor

from flip import FLIP


class FLIP_TRAINER(Executor):
    def __init__(self, project_id="", query="", **kwargs):
        super().__init__()
        FLIP().get_by_accession_number(project_id, "../{PATIENT}")

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        raise NotImplementedError
""",
    )
    reply = RUN_TRAINER().execute(FlipTask.TRAIN, train_task(global_weights()), site.ctx(FlipTask.TRAIN), Signal())
    reason = reply.get_header(FlipMeta.ERROR_REASON)
    assert reason.endswith("raised CohortValueError (custom/trainer.py line 9)"), reason
    assert not any(PATIENT in e for e in _records(caplog, logging.ERROR))
