"""The training jobs' model options on NVFlare's real components and a stand-in engine (tests/unit/test_nvflare_
internals.py's round harness): the model a run starts from, per-round models, per-round tests that wait for every
site, the best model. The registry model comes from a real S3 server (weed)."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.shareable import make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.abstract.model import ModelLearnableKey, make_model_learnable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.app_common.shareablegenerators.full_model_shareable_generator import FullModelShareableGenerator

from flip.constants import ComponentId, FlipEvent, FlipTask, RunFile
from flip.nvflare.components import (
    FlipModelPersistor,
    FlipModelSelector,
    InitialPTModelLocator,
    SampleWeightedAggregator,
    ServerEventHandler,
)
from flip.nvflare.components.flip_model_persistor import FRESH_MODEL
from flip.nvflare.controllers import FlipScatterAndGather
from flip.storage.layout import round_model_key
from flip.storage.registry import ModelRegistry
from tests.unit.test_nvflare_internals import Communicator, Engine, Persistor, update

MODEL = {"path": "torch.nn.Linear", "args": {"in_features": 2, "out_features": 1}}
SITES3 = ("site-1", "site-2", "site-3")


def _server(tmp_path, locator: InitialPTModelLocator | None, persistor: FlipModelPersistor, model_id: str):
    components = {
        ComponentId.PERSISTOR: persistor,
        ComponentId.SERVER_EVENT_HANDLER: ServerEventHandler(model_id=model_id),
    }
    if locator is not None:
        components[ComponentId.INITIAL_MODEL_LOCATOR] = locator
    engine = Engine(tmp_path / "ws", components)
    fl_ctx = engine.new_context()
    fl_ctx.set_prop(FLContextKey.APP_ROOT, str(tmp_path / "app"), private=True, sticky=True)
    persistor.handle_event(EventType.START_RUN, fl_ctx)
    return engine, fl_ctx


def _panics(engine) -> list[str]:
    return [
        str(data) for name, snap in engine.events if name == EventType.FATAL_SYSTEM_ERROR for data in [snap["data"]]
    ]


def _upload(weed, tmp_path, state, **kwargs):
    path = tmp_path / f"{uuid.uuid4().hex}.pt"
    torch.save(state, path)
    return ModelRegistry(weed._client(), weed.bucket).upload(None, path, name="start", **kwargs)


class Scale(torch.nn.Module):
    def forward(self, x):
        return x / 255.0


# -- the model a run starts from --------------------------------------------------------------------------------------


@pytest.mark.s3
def test_a_run_starts_from_the_registry_model_and_carries_its_preprocessing(tmp_path, weed, monkeypatch):
    """Before: no job used InitialPTModelLocator; the persistor always started from models.get_model()."""
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    pre = tmp_path / "pre.pt"
    torch.jit.script(Scale()).save(str(pre))
    manifest = _upload(
        weed,
        tmp_path,
        {"weight": torch.tensor([[1.0, 2.0]]), "bias": torch.tensor([3.0])},
        preprocessing=pre,
        input_shape="2",
    )
    ref = f"{manifest['model_id']}/{manifest['run_id']}"
    persistor = FlipModelPersistor(model=MODEL)
    engine, fl_ctx = _server(tmp_path, InitialPTModelLocator(registry_model=ref), persistor, str(uuid.uuid4()))
    learnable = persistor.load(fl_ctx)
    assert not _panics(engine)
    np.testing.assert_array_equal(learnable[ModelLearnableKey.WEIGHTS]["bias"], [3.0])
    np.testing.assert_array_equal(learnable[ModelLearnableKey.WEIGHTS]["weight"], [[1.0, 2.0]])
    assert persistor.initial_source == f"registry model {manifest['model_id']} run {manifest['run_id']}"
    assert persistor.initial_info["source"] == "registry" and persistor.initial_info["name"] == "start"
    carried = tmp_path / "ws" / "job-1" / RunFile.ARTIFACTS_DIR / RunFile.PREPROCESSING
    assert torch.equal(torch.jit.load(str(carried))(torch.tensor([255.0])), torch.tensor([1.0]))


@pytest.mark.s3
@pytest.mark.parametrize(
    "state, reason",
    [
        (
            {"weight": torch.zeros(1, 3), "bias": torch.zeros(1)},
            "key 'weight' has shape (1, 3), models.get_model() has (1, 2)",
        ),
        ({"weight": torch.zeros(1, 2)}, "key 'bias' of models.get_model() is missing (1 of 2 keys)"),
        (
            {"weight": torch.zeros(1, 2), "bias": torch.zeros(1), "extra": torch.zeros(1)},
            "key 'extra' is not in models.get_model()",
        ),
    ],
)
def test_a_registry_model_that_does_not_fit_ends_the_run_naming_the_first_key(
    tmp_path, weed, monkeypatch, state, reason
):
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    manifest = _upload(weed, tmp_path, state)
    persistor = FlipModelPersistor(model=MODEL)
    engine, fl_ctx = _server(
        tmp_path, InitialPTModelLocator(registry_model=manifest["model_id"]), persistor, str(uuid.uuid4())
    )
    assert persistor.load(fl_ctx) is None
    (panic,) = _panics(engine)
    assert (
        panic.startswith("cannot start from the initial model: the initial model (registry model ") and reason in panic
    )


@pytest.mark.s3
def test_an_unknown_registry_model_ends_the_run_instead_of_training_a_fresh_one(tmp_path, weed, monkeypatch):
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    missing = str(uuid.uuid4())
    persistor = FlipModelPersistor(model=MODEL)
    engine, fl_ctx = _server(tmp_path, InitialPTModelLocator(registry_model=missing), persistor, str(uuid.uuid4()))
    assert persistor.load(fl_ctx) is None
    assert _panics(engine) == [
        f"cannot start from the initial model: model {missing} has no runs in s3://{weed.bucket}"
    ]


@pytest.mark.unit
def test_without_a_registry_model_the_platforms_initial_model_comes_next(tmp_path, monkeypatch):
    model_id = str(uuid.uuid4())
    local = tmp_path / "flip"
    (local / "safehouse" / model_id).mkdir(parents=True)
    torch.save(
        {"weight": torch.tensor([[5.0, 6.0]]), "bias": torch.tensor([7.0])},
        local / "safehouse" / model_id / "initial_model.pt",
    )
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(local))
    monkeypatch.setenv("FLIP_ENV", "dev")
    persistor = FlipModelPersistor(model=MODEL)
    locator = InitialPTModelLocator()
    engine, fl_ctx = _server(tmp_path, locator, persistor, model_id)
    locator.handle_event(EventType.START_RUN, fl_ctx)
    learnable = persistor.load(fl_ctx)
    np.testing.assert_array_equal(learnable[ModelLearnableKey.WEIGHTS]["bias"], [7.0])
    assert persistor.initial_source == "dev safehouse"


@pytest.mark.unit
def test_with_no_initial_model_the_run_starts_from_get_model(tmp_path, monkeypatch):
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "empty"))
    torch.manual_seed(3)
    persistor = FlipModelPersistor(model=MODEL)
    locator = InitialPTModelLocator()
    engine, fl_ctx = _server(tmp_path, locator, persistor, str(uuid.uuid4()))
    locator.handle_event(EventType.START_RUN, fl_ctx)
    expected = {k: v.detach().numpy().copy() for k, v in persistor.model.state_dict().items()}
    learnable = persistor.load(fl_ctx)
    np.testing.assert_array_equal(learnable[ModelLearnableKey.WEIGHTS]["weight"], expected["weight"])
    assert persistor.initial_source == FRESH_MODEL and persistor.initial_info == {"source": "get_model"}


@pytest.mark.unit
def test_each_rounds_global_model_is_kept_only_when_asked(tmp_path):
    for keep in (True, False):
        persistor = FlipModelPersistor(model=MODEL, initial_model_locator_id="", keep_round_models=keep)
        _, fl_ctx = _server(tmp_path / str(keep), None, persistor, str(uuid.uuid4()))
        persistor.load(fl_ctx)
        for round_num in range(2):
            fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True, sticky=False)
            persistor.save(
                make_model_learnable(
                    {"weight": np.full((1, 2), round_num, np.float32), "bias": np.zeros(1, np.float32)}, {}
                ),
                fl_ctx,
            )
        kept = tmp_path / str(keep) / "ws" / "job-1" / RunFile.ARTIFACTS_DIR
        if keep:
            second = torch.load(kept / round_model_key(2), weights_only=True)
            assert second["weight"].tolist() == [[1.0, 1.0]] and (kept / round_model_key(1)).is_file()
        else:
            assert not kept.exists()


# -- per-round tests and the best model -------------------------------------------------------------------------------


class Recorder(Communicator):
    """The stand-in communicator, recording how each validate task was broadcast."""

    def __init__(self, engine, reply):
        super().__init__(engine, reply, answers={FlipTask.VALIDATE: lambda site, data: reply(site, None)})
        self.validate_calls: list[dict] = []

    def broadcast_and_wait(
        self, task, fl_ctx, targets=None, min_responses=1, wait_time_after_min_received=0, abort_signal=None
    ):
        if task.name == FlipTask.VALIDATE:
            self.validate_calls.append({"targets": targets, "min_responses": min_responses})
        super().broadcast_and_wait(task, fl_ctx, targets, min_responses, wait_time_after_min_received, abort_signal)


def _run(tmp_path, workflow, reply, extra=None, sites=SITES3):
    components = {
        ComponentId.PERSISTOR: Persistor(),
        ComponentId.AGGREGATOR: SampleWeightedAggregator(min_accepted=1),
        ComponentId.SHAREABLE_GENERATOR: FullModelShareableGenerator(),
        "training": workflow,
        **(extra or {}),
    }
    engine = Engine(tmp_path, components, sites=sites)
    communicator = Recorder(engine, reply)
    workflow.set_communicator(communicator)
    fl_ctx = engine.new_context()
    for component in extra.values() if extra else []:
        component.handle_event(EventType.START_RUN, fl_ctx)
    workflow.initialize(fl_ctx)
    workflow.control_flow(Signal(), fl_ctx)
    return engine, communicator


def _replies(accuracy_by_round: dict[int, float], silent: str | None = None):
    """Train replies for training tasks; for a validate task (no round header) each site's accuracy, ``silent``
    failing its test."""
    validated: dict[str, int] = {}

    def reply(site, round_num):
        if round_num is not None:
            return update(site, round_num)
        n = validated[site] = validated.get(site, 0) + 1
        if site == silent:
            return make_reply(ReturnCode.EXECUTION_EXCEPTION)
        return DXO(DataKind.METRICS, data={"accuracy": accuracy_by_round[n], "num_samples": 10}).to_shareable()

    return reply


@pytest.mark.unit
def test_per_round_tests_wait_for_every_site_not_min_clients(tmp_path):
    """Before: the per-round test was broadcast with min_responses=min_clients, so with min_clients=1 of 3 sites the
    round went on after the first answer and the later sites' test metrics were lost."""
    workflow = FlipScatterAndGather(min_clients=1, num_rounds=2, wait_time_after_min_received=0)
    assert workflow.model_test_after_each_round is True  # DLR's default
    engine, communicator = _run(tmp_path, workflow, _replies({1: 0.5, 2: 0.6}))
    assert communicator.validate_calls == [{"targets": list(SITES3), "min_responses": 3}] * 2
    validated = [snap for name, snap in engine.events if name == FlipEvent.ROUND_VALIDATED]
    assert len(validated) == 6
    assert [snap["round"] for name, snap in engine.events if name == FlipEvent.ROUND_VALIDATION_DONE] == [0, 1]


@pytest.mark.unit
def test_a_site_that_does_not_answer_its_per_round_test_is_named(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    workflow = FlipScatterAndGather(min_clients=1, num_rounds=1, wait_time_after_min_received=0)
    _run(tmp_path, workflow, _replies({1: 0.5}, silent="site-2"))
    assert (
        "round 1: per-round test: no usable answer from site-2 within 600 s (2 of 3 sites tested the global model)"
        in caplog.text
    )


@pytest.mark.unit
def test_the_model_selector_fires_for_each_new_best_round_only(tmp_path):
    """keep_best: NVFlare's selector, fed by the per-round tests, marks rounds 1 and 3 (accuracy 0.5, 0.4, 0.8) as the
    best so far; the persistor then saves the round's global model as the best model. No test: no best model."""
    selector = FlipModelSelector(key_metric="accuracy")
    workflow = FlipScatterAndGather(min_clients=1, num_rounds=3, wait_time_after_min_received=0)
    engine, _ = _run(tmp_path, workflow, _replies({1: 0.5, 2: 0.4, 3: 0.8}), {ComponentId.MODEL_SELECTOR: selector})
    best = [snap["round"] for name, snap in engine.events if name == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE]
    assert best == [0, 2] and selector.best_round == 3
    assert selector.best_raw_val_metric == pytest.approx(0.8)


@pytest.mark.unit
def test_a_lower_is_better_metric_is_selected_by_its_minimum(tmp_path):
    selector = FlipModelSelector(key_metric="accuracy", negate_key_metric=True)
    workflow = FlipScatterAndGather(min_clients=1, num_rounds=3, wait_time_after_min_received=0)
    engine, _ = _run(tmp_path, workflow, _replies({1: 0.5, 2: 0.4, 3: 0.8}), {ComponentId.MODEL_SELECTOR: selector})
    assert [s["round"] for n, s in engine.events if n == AppEventType.GLOBAL_BEST_MODEL_AVAILABLE] == [0, 1]
