"""A FLIP researcher's app runs here unchanged (issue 16, part B): FLIP's three executor contracts at a site, FLIP's
metrics on the server, integer buffers end to end, nested metrics into the results JSON, FlipEvaluation, and
per-stage train task names.

Everything runs as NVFlare runs it, without the simulator: real FLContext, Workspace, Shareables and DXOs sent
through FOBS (as over the network), NVFlare's own fed-event runner stamping a metric's site, NVFlare's
PTFileModelPersistor and FullModelShareableGenerator on the server, the dev platform on real CSV and DICOM files.
The apps are written to tmp_path as researchers write them (tests/flip_runtime_apps.py).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from nvflare.apis.client import Client
from nvflare.apis.controller_spec import ClientTask
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator
from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor
from nvflare.fuel.utils import fobs
from nvflare.widgets.fed_event import FedEventRunner

from flip.constants import ComponentId, FlipEvents, FlipMeta, FlipTask, RunFile
from flip.jobs import DEMO_APP_DIR
from flip.nvflare.components import (
    EvaluationJsonGenerator,
    GaussianPrivacy,
    PercentilePrivacy,
    SampleWeightedAggregator,
    StagePercentilePrivacy,
)
from flip.nvflare.controllers import FlipEvaluation, MultiStageScatterAndGather
from flip.nvflare.controllers.flip_evaluation import load_evaluation_models
from flip.nvflare.executors import (
    RUN_EVALUATOR,
    RUN_MONAI_FL_EVALUATOR,
    RUN_MONAI_FL_TRAINER,
    RUN_MONAI_FL_VALIDATOR,
    RUN_TRAINER,
    RUN_VALIDATOR,
)
from flip.nvflare.executors.user_code import build_model
from flip.platform.dev import LocalPlatform
from flip.platform.site import SITE_DATA_VAR, SiteData, current_site, site_data_json
from flip.report import write_report
from tests import flip_runtime_apps as apps
from tests.hostile.test_server import Server, strict_json
from tests.unit.conftest import FakeEngine

pytestmark = pytest.mark.unit
common_decomposers.register()  # numpy arrays over FOBS, as NVFlare's runtime registers them

SITES = {"site-1": 3, "site-2": 2}  # accessions per site (two DICOM images each): 3 and 2 steps of batch 2


class Wire(FedEventRunner):
    """NVFlare's fed-event runner of a site: it stamps the origin and event type; what it sends is kept."""

    def __init__(self):
        super().__init__()
        self.sent: list[Shareable] = []

    def fire_and_forget_request(self, request, fl_ctx, targets=None, secure=False):
        self.sent.append(fobs.loads(fobs.dumps(request)))


class SiteEngine(FakeEngine):
    """A site's engine: a real Workspace; events go to NVFlare's fed-event runner (metrics to the server)."""

    def __init__(self, root: Path, site: str):
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, site)
        self.wire = Wire()

    def fire_event(self, event_type, fl_ctx):
        self.wire.handle_event(event_type, fl_ctx)


class Site:
    """One site of a run: its engine, its FLContext and its app's custom/ folder."""

    def __init__(self, tmp_path: Path, name: str, job: str = "job-1"):
        self.name = name
        self.engine = SiteEngine(tmp_path / "sites" / name, name)
        self.custom = Path(self.engine.workspace.get_app_custom_dir(job))

    def ctx(self, task: str | None = None) -> FLContext:
        fl_ctx = FLContext()
        fl_ctx.set_prop(ReservedKey.ENGINE, self.engine, private=True, sticky=False)
        fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
        fl_ctx.set_prop(ReservedKey.IDENTITY_NAME, self.name, private=True, sticky=False)
        if task:
            fl_ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
        return fl_ctx


@pytest.fixture
def flip_env(tmp_path, monkeypatch):
    """Dev platform; each site's own cohort through FLIP_SITE_DATA (as `flip simulate --site-data` sets it)."""
    for var in ("LOCAL_DEV", "DEV_DATAFRAME", "DEV_IMAGES_DIR", SITE_DATA_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    data = {}
    offset = 0
    for site, accessions in SITES.items():
        csv, images = apps.write_cohort(tmp_path / "data" / site, accessions, offset)
        data[site] = SiteData(dataframe=csv, images=images)
        offset += accessions
    monkeypatch.setenv(SITE_DATA_VAR, site_data_json(data))
    apps.forget_app_modules()
    yield data
    apps.forget_app_modules()


def global_weights() -> dict[str, np.ndarray]:
    """The app's initial model as the server sends it: every state_dict entry, numpy."""
    namespace: dict = {}
    exec(apps.MODELS, namespace)  # noqa: S102 - the test's own model source
    return {k: v.numpy().copy() for k, v in namespace["get_model"]().state_dict().items()}


def train_task(weights: dict, round_num: int = 0) -> Shareable:
    task = DXO(DataKind.WEIGHTS, data=weights).to_shareable()
    task.set_header(AppConstants.CURRENT_ROUND, round_num)
    task.set_header(AppConstants.NUM_ROUNDS, 2)
    return fobs.loads(fobs.dumps(task))


def make_server(tmp_path: Path) -> Server:
    """The server's ServerEventHandler, results JSON and persist-and-cleanup of one run, in ``tmp_path/server``."""
    (tmp_path / "server").mkdir(exist_ok=True)
    return Server(tmp_path / "server")


def wire(shareable: Shareable) -> Shareable:
    """``shareable`` as it arrives at the other end."""
    return fobs.loads(fobs.dumps(shareable))


# ---------------------------------------------------------------------------------------------------------------
# 1. FLIP's Executor contract (flip-fl-base)
# ---------------------------------------------------------------------------------------------------------------
def test_executor_trainer_runs_unchanged_with_its_sites_data(tmp_path, flip_env):
    """FLIP_TRAINER(Executor) is built with FLIP's keywords, reads its own site's CSV and DICOM files with
    FLIP().get_dataframe / get_by_accession_number, trains through a DataLoader with a worker process, sends
    metrics with send_metrics_value and returns get_model_weights_diff: every state_dict entry, weighted by its
    steps."""
    weights = global_weights()
    for site_name, accessions in SITES.items():
        site = Site(tmp_path, site_name)
        apps.write_app(site.custom, trainer=apps.EXECUTOR_TRAINER)
        executor = RUN_TRAINER(project_id="project-7", query="SELECT * FROM cohort")
        reply = executor.execute(FlipTask.TRAIN, train_task(weights), site.ctx(FlipTask.TRAIN), Signal())
        assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_header(FlipMeta.ERROR_REASON)
        user = executor._app.user
        assert (user.project_id, user.query, user._train_task_name) == ("project-7", "SELECT * FROM cohort", "train")
        dxo = from_shareable(wire(reply))
        steps = accessions  # two images per accession, batches of two
        assert dxo.data_kind == DataKind.WEIGHT_DIFF and sorted(dxo.data) == sorted(weights)
        assert int(dxo.data["bn.num_batches_tracked"]) == steps and dxo.data["bn.num_batches_tracked"].dtype == np.int64
        assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == steps
        assert dxo.get_meta_prop(FlipMeta.NUM_SAMPLES) == steps  # FLIP's weight: the update's steps
        assert current_site() is None  # the site was named only while the app ran
        events = [from_shareable(e).data for e in site.engine.wire.sent]
        assert [e["label"] for e in events] == ["TRAIN_LOSS"] + ["TRAIN-F1-SCORE"] * 3
        assert events[0]["round"] == 1 and "round" not in events[1]


def test_executor_validator_nested_metrics_leave_with_their_shape(tmp_path, flip_env, caplog):
    """A FLIP validator's METRICS (a dict of lists, numpy numbers, NaN inside) leave the site as plain numbers in
    the same shape, the NaN dropped with a note, through the site's privacy filter; the server's results JSON keeps
    the shape (strict JSON)."""
    caplog.set_level(logging.INFO)
    site = Site(tmp_path, "site-1")
    apps.write_app(site.custom, validator=apps.EXECUTOR_VALIDATOR)
    task = train_task(global_weights())
    task.set_header(AppConstants.MODEL_OWNER, RunFile.SERVER_MODEL)
    reply = RUN_VALIDATOR().execute(FlipTask.VALIDATE, task, site.ctx(FlipTask.VALIDATE), Signal())
    reply = PercentilePrivacy().process(reply, site.ctx(FlipTask.VALIDATE))  # a site's privacy scope
    metrics = from_shareable(wire(reply)).data
    assert metrics["f1-score"] == {"Effusion": [0.5], "Lungs in normal arrangement": [0.25]}
    assert len(metrics["loss"]) == 3 and all(type(v) is float for v in metrics["loss"])
    assert type(metrics["accuracy"]) is float
    assert "1 non-finite value(s) dropped (NaN, Inf), the first at 'f1-score.Effusion[1]'" in caplog.text

    server = make_server(tmp_path)
    server.fire(EventType.START_RUN)
    server.fire(
        AppEventType.VALIDATION_RESULT_RECEIVED,
        **{
            AppConstants.MODEL_OWNER: RunFile.SERVER_MODEL,
            AppConstants.DATA_CLIENT: "site-1",
            AppConstants.VALIDATION_RESULT: reply,
        },
    )
    written = strict_json(server.json.write_results(server.ctx).read_text())
    assert written == {"site-1": {RunFile.SERVER_MODEL: metrics}}


def test_validator_task_names_and_flip_arguments(tmp_path, flip_env):
    """FLIP's multi-stage validators serve their own task name (validate_ae); the arguments FLIP's configs give are
    what the app's constructor gets."""
    site = Site(tmp_path, "site-1")
    apps.write_app(site.custom, validator=apps.EXECUTOR_VALIDATOR)
    executor = RUN_VALIDATOR(validate_task_name="validate_ae", project_id="p", query="q")
    reply = executor.execute("validate_ae", train_task(global_weights()), site.ctx("validate_ae"), Signal())
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
    assert executor._app.user._validate_task_name == "validate_ae"
    reply = StagePercentilePrivacy().process(reply, site.ctx("validate_ae"))  # a METRICS result, not an update
    assert from_shareable(reply).data_kind == DataKind.METRICS


# ---------------------------------------------------------------------------------------------------------------
# 2. FLIP's MONAI FL ClientAlgo contract
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("executor_class", [RUN_MONAI_FL_TRAINER, RUN_TRAINER])
def test_client_algo_trainer_lifecycle(tmp_path, flip_env, executor_class):
    """initialize once with {fl_ctx}; train with {fl_ctx, abort_signal, current_round}; get_weights(WEIGHT_DIFF) is
    the reply (NUM_STEPS from statistics["num_steps"]); submit_model asks get_weights(WEIGHTS). RUN_TRAINER runs
    the same app the same way (its class says which contract it follows)."""
    site = Site(tmp_path, "site-1")
    apps.write_app(site.custom, trainer=apps.CLIENT_ALGO_TRAINER)
    executor = executor_class(project_id="p", query="q")
    weights = global_weights()
    for round_num in (0, 1):
        reply = executor.execute(FlipTask.TRAIN, train_task(weights, round_num), site.ctx(FlipTask.TRAIN), Signal())
        dxo = from_shareable(wire(reply))
        assert dxo.data_kind == DataKind.WEIGHT_DIFF and sorted(dxo.data) == sorted(weights)
        assert dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND) == 3 == dxo.get_meta_prop(FlipMeta.NUM_SAMPLES)
    full = from_shareable(executor.execute("submit_model", Shareable(), site.ctx("submit_model"), Signal()))
    assert full.data_kind == DataKind.WEIGHTS and isinstance(full.data["fc.weight"], np.ndarray)
    algo = executor._app.algo
    assert [c[0] for c in algo.calls] == ["initialize", "train", "get_weights", "train", "get_weights", "get_weights"]
    assert algo.calls[0][1] == ["fl_ctx"] and algo.calls[1][1] == ["abort_signal", "current_round", "fl_ctx"]
    assert (algo.project_id, algo.query, algo.train_task_name) == ("p", "q", "train")
    assert [from_shareable(e).data["label"] for e in site.engine.wire.sent] == ["train_loss", "train_loss"]
    assert (
        executor.execute("validate", Shareable(), site.ctx("validate"), Signal()).get_return_code()
        == ReturnCode.TASK_UNKNOWN
    )


def test_client_algo_validator_and_evaluator(tmp_path, flip_env):
    site = Site(tmp_path, "site-1")
    apps.write_app(site.custom, validator=apps.CLIENT_ALGO_VALIDATOR, evaluator=apps.CLIENT_ALGO_EVALUATOR)
    weights = global_weights()
    reply = RUN_MONAI_FL_VALIDATOR().execute("validate", train_task(weights), site.ctx("validate"), Signal())
    assert from_shareable(reply).data == {"val_acc": 0.5, "per_class": [0.25]}
    collection = DXO(
        DataKind.COLLECTION,
        data={"first": DXO(DataKind.WEIGHTS, data=weights), "second": DXO(DataKind.WEIGHTS, data=weights)},
    )
    reply = RUN_MONAI_FL_EVALUATOR().execute(
        "evaluation", wire(collection.to_shareable()), site.ctx("evaluation"), Signal()
    )
    assert from_shareable(reply).data == {n: {"mean_dice": 0.5, "raw_dice": [0.25, 0.75]} for n in ("first", "second")}


# ---------------------------------------------------------------------------------------------------------------
# 3. our plain contract is unchanged
# ---------------------------------------------------------------------------------------------------------------
def test_plain_contract_runs_as_before(tmp_path, monkeypatch):
    """The demo app (our plain contract) through the executors with no arguments, as jobs/standard names them."""
    from flip.demo.data import write_cohorts

    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    write_cohorts(tmp_path / "flip", ["site-1"])
    apps.forget_app_modules()
    site = Site(tmp_path, "site-1")
    shutil.copytree(DEMO_APP_DIR, site.custom, ignore=shutil.ignore_patterns("__pycache__"))
    model = build_model(site.custom)
    weights = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    try:
        reply = RUN_TRAINER().execute(FlipTask.TRAIN, train_task(weights), site.ctx(FlipTask.TRAIN), Signal())
        dxo = from_shareable(reply)
        assert dxo.data_kind == DataKind.WEIGHT_DIFF and dxo.get_meta_prop(FlipMeta.NUM_SAMPLES) > 0
        task = train_task(weights)
        reply = RUN_VALIDATOR().execute(FlipTask.VALIDATE, task, site.ctx(FlipTask.VALIDATE), Signal())
        assert set(from_shareable(reply).data) >= {"accuracy", "loss"}
        for name in (FlipTask.EVALUATE, "evaluation"):  # jobs/evaluation sends `evaluate`; FLIP's name too
            reply = RUN_EVALUATOR().execute(name, train_task(weights), site.ctx(name), Signal())
            assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_header(FlipMeta.ERROR_REASON)
    finally:
        apps.forget_app_modules()


# ---------------------------------------------------------------------------------------------------------------
# 4. a BatchNorm model end to end at FakeEngine level
# ---------------------------------------------------------------------------------------------------------------
def _server_ctx(tmp_path: Path, site: str | None, round_num: int, global_model) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path / "server", "server"), private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path / "server" / "job-1" / "app_server"), private=True, sticky=False)
    if site:
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
        ctx.set_peer_context(peer)
    ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
    ctx.set_prop(AppConstants.NUM_ROUNDS, 2, private=True, sticky=False)
    ctx.set_prop(AppConstants.GLOBAL_MODEL, global_model, private=True, sticky=False)
    return ctx


def test_batchnorm_model_end_to_end_at_fakeengine_level(tmp_path, flip_env, caplog):
    """NVFlare's PTFileModelPersistor and FullModelShareableGenerator send every state_dict entry (BatchNorm's
    running statistics and its int64 counter), so a FLIP trainer's strict load_state_dict works; the counter passes
    PercentilePrivacy unchanged (annotated), the aggregator takes it and averages it (rounded, int64 kept); the new
    global model loads strictly, two rounds running, and is saved and loaded again."""
    caplog.set_level(logging.INFO)
    (tmp_path / "server").mkdir(exist_ok=True)
    sites = {name: Site(tmp_path, name) for name in SITES}
    for site in sites.values():
        apps.write_app(site.custom, trainer=apps.EXECUTOR_TRAINER)
    exec_ns: dict = {}
    exec(apps.MODELS, exec_ns)  # noqa: S102 - the test's own model source (the sites import the same)
    persistor = PTFileModelPersistor(model=exec_ns["get_model"]())
    generator = FullModelShareableGenerator()
    ctx = _server_ctx(tmp_path, None, 0, None)
    persistor.handle_event(EventType.START_RUN, ctx)
    learnable = persistor.load(ctx)
    executors = {name: RUN_TRAINER() for name in sites}
    for round_num in (0, 1):
        ctx = _server_ctx(tmp_path, None, round_num, learnable)
        task = generator.learnable_to_shareable(learnable, ctx)
        sent = from_shareable(task).data
        assert sorted(sent) == sorted(exec_ns["get_model"]().state_dict())  # buffers included
        assert sent["bn.num_batches_tracked"].dtype == np.int64
        task.set_header(AppConstants.CURRENT_ROUND, round_num)
        aggregator = SampleWeightedAggregator(min_accepted=2)
        aggregator.reset(ctx)
        for name, site in sites.items():
            reply = executors[name].execute(FlipTask.TRAIN, wire(task), site.ctx(FlipTask.TRAIN), Signal())
            assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_header(FlipMeta.ERROR_REASON)
            filtered = PercentilePrivacy(percentile=10, gamma=1.0).process(reply, site.ctx(FlipTask.TRAIN))
            dxo = from_shareable(filtered)
            assert int(dxo.data["bn.num_batches_tracked"]) == SITES[name]  # unchanged by the filter
            assert dxo.get_meta_prop(FlipMeta.PRIVACY)[0]["integer_entries"] == 1
            arrived = wire(filtered)
            arrived.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_num)
            assert aggregator.accept(arrived, _server_ctx(tmp_path, name, round_num, learnable)), aggregator.excluded
        mean = aggregator.aggregate(ctx)
        # (3*3 + 2*2) / 5 = 2.6 batches, rounded: 3; int64 kept
        assert from_shareable(mean).data["bn.num_batches_tracked"].dtype == np.int64
        assert int(from_shareable(mean).data["bn.num_batches_tracked"]) == 3
        learnable = generator.shareable_to_learnable(mean, ctx)
        weights = learnable[ModelLearnableKey.WEIGHTS]
        assert int(weights["bn.num_batches_tracked"]) == 3 * (round_num + 1)
        strict = exec_ns["get_model"]()
        strict.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()}, strict=True)
        persistor.save(learnable, ctx)
    saved = torch.load(
        Path(persistor.get_model_inventory(ctx)[persistor.global_model_file_name].location), weights_only=True
    )["model"]
    exec_ns["get_model"]().load_state_dict(saved, strict=True)
    assert int(saved["bn.num_batches_tracked"]) == 6 and saved["bn.num_batches_tracked"].dtype == torch.int64


def test_integer_counters_through_every_filter(tmp_path):
    """PercentilePrivacy and StagePercentilePrivacy pass an int64 counter unchanged and count it in their
    annotation (the percentile is over the floats only); GaussianPrivacy withholds it (noise cannot cover it)."""

    def update():
        return DXO(
            DataKind.WEIGHT_DIFF,
            data={"w": (np.arange(1, 51) * 0.01).astype(np.float32), "bn.num_batches_tracked": np.array(7, np.int64)},
            meta={MetaKey.NUM_STEPS_CURRENT_ROUND: 1},
        ).to_shareable()

    ctx = FLContext()
    ctx.set_prop(FLContextKey.TASK_NAME, FlipTask.TRAIN, private=True, sticky=False)
    for make in (PercentilePrivacy, StagePercentilePrivacy):
        out = from_shareable(make(percentile=50, gamma=0.5).process(update(), ctx))
        assert int(out.data["bn.num_batches_tracked"]) == 7 and out.data["bn.num_batches_tracked"].dtype == np.int64
        assert list(out.data) == ["w", "bn.num_batches_tracked"]
        record = out.get_meta_prop(FlipMeta.PRIVACY)[0]
        assert record["integer_entries"] == 1 and list(record["parts"].values())[0]["shared"] == 0.5
    gaussian = GaussianPrivacy(noise_multiplier=1.0, seed=1)
    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path, "site-1"), private=True, sticky=False)
    (tmp_path / "job-1").mkdir()
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    out = from_shareable(gaussian.process(update(), ctx))
    assert list(out.data) == ["w"] and out.get_meta_prop(FlipMeta.PRIVACY)[0]["integer_entries_withheld"] == 1


# ---------------------------------------------------------------------------------------------------------------
# 5. FLIP's metrics reach RunMetrics, metrics.json, the report and the platform
# ---------------------------------------------------------------------------------------------------------------
def test_flip_metrics_reach_metrics_json_the_report_and_the_platform(tmp_path, flip_env, caplog):
    """send_metrics_value at two sites -> NVFlare's fed-event runner -> the ServerEventHandler: recorded per round,
    site and label in arrival order (repeated labels kept; the NaN dropped with a note naming the site), a metric
    without a round at the server's round; in metrics.json, the report and the platform's metrics."""
    caplog.set_level(logging.INFO)
    weights = global_weights()
    sent = []
    for site_name in SITES:
        site = Site(tmp_path, site_name)
        apps.write_app(site.custom, trainer=apps.EXECUTOR_TRAINER)
        RUN_TRAINER().execute(FlipTask.TRAIN, train_task(weights, round_num=1), site.ctx(FlipTask.TRAIN), Signal())
        sent += site.engine.wire.sent
    server = make_server(tmp_path)
    server.fire(EventType.START_RUN)
    server.fire(AppEventType.ROUND_STARTED, **{AppConstants.CURRENT_ROUND: 1, AppConstants.NUM_ROUNDS: 2})
    for event in sent:
        server.fire(FlipEvents.SEND_RESULT, **{FLContextKey.EVENT_DATA: event})
    server.fire(AppEventType.ROUND_DONE, **{AppConstants.CURRENT_ROUND: 1})
    document = server.metrics_json()
    rounds = {entry["round"]: entry["sites"] for entry in document["flip_metrics"]}
    assert sorted(rounds) == [2]  # the app's own x value (round 1 * 1 local round + 1) and the server's 1-based
    for site_name in SITES:
        labels = rounds[2][site_name]
        assert labels["TRAIN-F1-SCORE"] == [0.5, 0.75] and len(labels["TRAIN_LOSS"]) == 1
    assert (
        sum(
            "a metric from site 'site-1' dropped: metric 'TRAIN-F1-SCORE' is not finite" in r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING
        )
        == 1
    )
    reported = [
        r
        for r in LocalPlatform(tmp_path / "server" / "flip").read_metrics(server.model_id)
        if "TRAIN-F1-SCORE" in r["metrics"]
    ]
    assert [(r["site"], r["round"], r["metrics"]["TRAIN-F1-SCORE"]) for r in reported] == [
        ("site-1", 2, 0.5),
        ("site-1", 2, 0.75),
        ("site-2", 2, 0.5),
        ("site-2", 2, 0.75),
    ]
    page = write_report(document, tmp_path / "report")["index.html"].read_text()
    assert "Metrics the app sent" in page and "TRAIN-F1-SCORE" in page


# ---------------------------------------------------------------------------------------------------------------
# 6. FlipEvaluation
# ---------------------------------------------------------------------------------------------------------------
EVALUATION_CONFIG = {
    "models": {
        "first": {"checkpoint": "first.pt", "path": "net"},
        "second": {"checkpoint": "ckpt/second.pt", "path": "net"},
    }
}


def _server_app(custom: Path) -> dict[str, dict]:
    """The server app of an evaluation job: config.json, models.py and two checkpoints (one in NVFlare's format)."""
    apps.write_app(custom, config=json.dumps(EVALUATION_CONFIG))
    ns: dict = {}
    exec(apps.MODELS, ns)  # noqa: S102 - the test's own model source
    states = {}
    for seed, (name, entry) in enumerate(EVALUATION_CONFIG["models"].items()):
        torch.manual_seed(seed + 10)
        state = {
            k: (torch.randn_like(v) if v.is_floating_point() else v + seed)
            for k, v in ns["get_model"]().state_dict().items()
        }
        (custom / entry["checkpoint"]).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state if seed == 0 else {"model": state, "train_conf": {"train": {}}}, custom / entry["checkpoint"])
        states[name] = state
    return states


class AnsweredFlipEvaluation(FlipEvaluation):
    """FlipEvaluation whose task the given sites answered (NVFlare's task delivery needs real sites)."""

    def __init__(self, answer):
        super().__init__(min_clients=2)
        self.answer = answer
        self.tasks = []

    def broadcast_and_wait(self, task, fl_ctx, **kwargs):
        self.tasks.append(task)
        for site in SITES:
            client_task = ClientTask(Client(site, None), task)
            client_task.result = self.answer(site, task)
            task.result_received_cb(client_task=client_task, fl_ctx=fl_ctx)


def test_flip_evaluation_sends_one_collection_and_writes_each_sites_reply(tmp_path, flip_env):
    """The checkpoints (a state dict, and one in NVFlare's {"model": ...} format) are loaded weights_only and
    strictly into models.model_paths, sent once as a COLLECTION of WEIGHTS; each site's FLIP_EVALUATOR(Executor)
    reply is written as {site: reply} (nested, NaN dropped), the run reported as started."""
    server = make_server(tmp_path)
    custom = server.run_dir / "app_server" / "custom"
    states = _server_app(custom)
    generator = EvaluationJsonGenerator()
    server.engine.components[ComponentId.JSON_GENERATOR] = generator
    loaded = load_evaluation_models(custom)
    for name, state in states.items():
        np.testing.assert_array_equal(loaded[name]["fc.weight"], state["fc.weight"].numpy())
        assert sorted(loaded[name]) == sorted(state)
    site_objects = {name: Site(tmp_path, name) for name in SITES}
    for site in site_objects.values():
        apps.write_app(site.custom, evaluator=apps.EXECUTOR_EVALUATOR, config=json.dumps(EVALUATION_CONFIG))

    def answer(site_name, task):
        apps.forget_app_modules()
        site = site_objects[site_name]
        return wire(RUN_EVALUATOR().execute(task.name, wire(task.data), site.ctx(task.name), Signal()))

    server.fire(EventType.START_RUN)
    workflow = AnsweredFlipEvaluation(answer)
    workflow.control_flow(Signal(), server.ctx)
    [task] = workflow.tasks
    collection = from_shareable(task.data)
    assert task.name == "evaluation" and collection.data_kind == DataKind.COLLECTION
    assert {n: d.data_kind for n, d in collection.data.items()} == {
        "first": DataKind.WEIGHTS,
        "second": DataKind.WEIGHTS,
    }
    written = strict_json(generator.write_results(server.ctx).read_text())
    assert sorted(written) == sorted(SITES)
    for site_name, reply in written.items():
        assert sorted(reply) == ["first", "second"]
        assert set(reply["first"]["lesion"]) == {"mean_accuracy", "raw_accuracy"}
        assert len(reply["first"]["lesion"]["raw_accuracy"]) == SITES[site_name]  # the NaN dropped
    assert [s["status"] for s in server.statuses()] == ["INITIATED", "TRAINING_STARTED"]
    assert not server.handler.fatal_error


# ---------------------------------------------------------------------------------------------------------------
# 7. multi-stage with FLIP's task names
# ---------------------------------------------------------------------------------------------------------------
def test_multi_stage_rounds_carry_each_stages_train_task_name():
    """FLIP's diffusion apps train `train_ae` then `train_dm` (two trainer instances at each site): each round's
    task takes its stage's name; a stage without one keeps the workflow's (NVFlare's round loop running it:
    tests/unit/test_nvflare_internals.py, row 35)."""
    workflow = MultiStageScatterAndGather(
        stages=[
            {"name": "ae", "num_rounds": 1, "train_task_name": "train_ae"},
            {"name": "dm", "num_rounds": 2, "train_task_name": "train_dm"},
            {"name": "tune", "num_rounds": 1},
        ]
    )
    names = []
    for round_num in range(4):
        ctx = FLContext()
        ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
        workflow.handle_event(AppEventType.ROUND_STARTED, ctx)
        names.append(workflow.train_task_name)
    assert names == ["train_ae", "train_dm", "train_dm", "train"]
    assert workflow.stage_of(2) == ("dm", 1, 2)
