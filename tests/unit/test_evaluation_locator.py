"""EvaluationPTModelLocator honours NVFlare's ModelLocator contract (``locate_model(name, fl_ctx) -> DXO``) and keeps
SPEC.md's ``locate_model(fl_ctx) -> {model_id: DXO}``; EvaluateModels locates each name of ``get_model_names``.

Real parts: a real S3 server (weed) holding a registered model, a real Workspace with the job's initial model.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.constants import ComponentId, FlipProp
from flip.errors import FlipError
from flip.nvflare.components import EvaluationPTModelLocator
from flip.nvflare.components.initial_pt_model_locator import INITIAL_MODEL_FILE
from flip.nvflare.controllers import EvaluateModels
from flip.storage.registry import ModelRegistry
from tests.fakes import ServerEngine

pytestmark = pytest.mark.s3

REGISTERED = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
INITIAL = {"w": torch.tensor([7.0, 8.0]), "b": torch.tensor([9.0])}


def _ctx(tmp_path, locator, initial: bool) -> FLContext:
    (tmp_path / "ws").mkdir(exist_ok=True)
    engine = ServerEngine(tmp_path / "ws", {ComponentId.MODEL_LOCATOR: locator}, sites=["site-1"])
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    custom = tmp_path / "ws" / "job-1" / "app_server" / "custom"
    custom.mkdir(parents=True, exist_ok=True)
    if initial:
        torch.save(INITIAL, custom / INITIAL_MODEL_FILE)
    return ctx


@pytest.fixture
def models(tmp_path, weed, monkeypatch):
    """Two model ids: one with a verified run in the registry, one with only the job's initial model."""
    for key, value in weed.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    registered, initial_only = str(uuid.uuid4()), str(uuid.uuid4())
    torch.save(REGISTERED, tmp_path / "model.pt")
    ModelRegistry(weed._client(), weed.bucket).upload(registered, tmp_path / "model.pt")
    return registered, initial_only


def _values(dxo: DXO) -> dict:
    assert isinstance(dxo, DXO) and dxo.data_kind == DataKind.WEIGHTS
    return {k: np.asarray(v).tolist() for k, v in dxo.data.items()}


def test_both_call_forms_locate_the_same_models(tmp_path, models):
    registered, initial_only = models
    locator = EvaluationPTModelLocator()
    ctx = _ctx(tmp_path, locator, initial=True)
    ctx.set_prop(FlipProp.EVALUATE_MODEL_IDS, [registered, initial_only], private=True, sticky=False)
    assert locator.get_model_names(ctx) == [registered, initial_only]

    one = locator.locate_model(registered, ctx)  # NVFlare's form: one name, one DXO
    assert _values(one) == {"w": [1.0, 2.0], "b": [0.5]}
    assert set(locator.models) == {registered}  # filled by the per-name form too
    assert _values(locator.locate_model(initial_only, ctx)) == {"w": [7.0, 8.0], "b": [9.0]}
    assert set(locator.models) == {registered, initial_only}

    every = locator.locate_model(ctx)  # SPEC's form: every model, as a dict
    assert list(every) == [registered, initial_only] and every is locator.models
    assert _values(every[registered]) == _values(one)
    assert _values(every[initial_only]) == {"w": [7.0, 8.0], "b": [9.0]}


def test_a_model_that_cannot_be_found_is_named(tmp_path, models):
    _, initial_only = models
    locator = EvaluationPTModelLocator()
    ctx = _ctx(tmp_path, locator, initial=False)
    with pytest.raises(FlipError, match=f"model {initial_only} has no verified run in s3://.* and no initial model"):
        locator.locate_model(initial_only, ctx)
    with pytest.raises(ValueError, match="model_id must be a UUID .* got 'not-a-model'"):
        locator.locate_model("not-a-model", ctx)


class _RecordingLocator(EvaluationPTModelLocator):
    """The real locator, recording how it is called."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def locate_model(self, model_name, fl_ctx=None):
        self.calls.append(model_name if isinstance(model_name, str) else "fl_ctx")
        return super().locate_model(model_name, fl_ctx)


class _AnsweredEvaluateModels(EvaluateModels):
    """EvaluateModels whose evaluate tasks are recorded instead of sent (task delivery needs real sites)."""

    def __init__(self, model_ids):
        super().__init__(model_ids=model_ids, min_clients=1)
        self.sent = []

    def broadcast_and_wait(self, task, fl_ctx, **kwargs):
        self.sent.append((task.props[AppConstants.MODEL_OWNER], _values(from_shareable(task.data))))
        self._ok[task.props[AppConstants.MODEL_OWNER]].add("site-1")

    def fire_event(self, event_type, fl_ctx):
        pass


def test_evaluate_models_locates_each_name(tmp_path, models):
    """EvaluateModels asks get_model_names and calls locate_model(name, fl_ctx) per name, like CrossSiteModelEval
    (it used to call locate_model(fl_ctx), outside NVFlare's contract)."""
    registered, initial_only = models
    locator = _RecordingLocator()
    workflow = _AnsweredEvaluateModels([registered, initial_only])
    ctx = _ctx(tmp_path, locator, initial=True)
    workflow._engine = ctx.get_engine()
    workflow.start_controller(ctx)
    workflow.control_flow(Signal(), ctx)
    assert locator.calls == [registered, initial_only]
    assert workflow.sent == [(registered, {"w": [1.0, 2.0], "b": [0.5]}), (initial_only, {"w": [7.0, 8.0], "b": [9.0]})]
