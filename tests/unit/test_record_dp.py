"""Record-level DP-SGD at a site (flip.privacy.dp_sgd, SitePrivacyPolicy): Opacus's accounting is the ε recorded,
models DP-SGD cannot train are refused by layer, the site's policy cannot be weakened by a job, and nothing computed
on the site's data leaves beside the update.

Real Opacus, real torch training, real DXOs and FLContexts; the site's engine is tests/fakes.py's FakeEngine made a
client engine (components by id, events to every component in order, the policy last as NVFlare adds it)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from nvflare.apis.client_engine_spec import ClientEngineSpec
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.event import fire_event_to_components
from opacus.accountants import RDPAccountant

from flip.constants import ComponentId, FlipMeta, FlipProp
from flip.errors import DPModelError, PrivacyError, TaskFailed
from flip.nvflare.components import ClientEventHandler, GaussianPrivacy, PercentilePrivacy, SitePrivacyPolicy
from flip.privacy import fix_model
from flip.privacy.dp_sgd import DPSession, RecordLevelPolicy, check_model
from flip.privacy.ledger import PrivacyLedger, ledger_path
from flip.utils import make_private
from tests.fakes import FakeEngine

pytestmark = pytest.mark.unit

RECORDS, BATCH = 200, 20


class SiteEngine(FakeEngine):
    """A site's engine: the job's components by id, then the site's privacy components (NVFlare adds those of
    local/privacy.json after the job's, so they handle every event last)."""

    def __init__(self, root, components: dict, site: str = "site-1"):
        super().__init__(root, site)
        self.components = dict(components)
        self.widgets: list = []

    def get_component(self, component_id):
        return self.components.get(component_id)

    def get_all_components(self):
        return self.components

    def fire(self, event_type: str, fl_ctx: FLContext) -> None:
        """Deliver the event as NVFlare's dispatcher does: to every component in order, then the widgets (the
        federated-event forwarder: set ``forwarder``), resetting the event's scope and data for each."""
        handlers = [c for c in self.components.values() if isinstance(c, FLComponent)] + self.widgets
        fire_event_to_components(event_type, handlers, fl_ctx)

    fire_event = fire


ClientEngineSpec.register(SiteEngine)


def _ctx(engine: SiteEngine, job_id: str = "job-1", task: str = "train") -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, job_id, private=True, sticky=False)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, engine.workspace.site_name, private=True, sticky=False)
    ctx.set_prop(FLContextKey.TASK_NAME, task, private=True, sticky=False)
    return ctx


def _data(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(RECORDS, 8, generator=generator)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _train(model, optimizer, loader, epochs: int = 1) -> int:
    steps = 0
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            steps += 1
    return steps


def _opacus_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε of ``steps`` DP-SGD steps by Opacus's own RDP accountant, stepped one step at a time."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=sample_rate)
    return accountant.get_epsilon(delta=delta)


# -- DP-SGD and its accounting ---------------------------------------------------------------------------------
def test_recorded_epsilon_is_opacus_accounting_of_the_same_steps():
    session = DPSession(RecordLevelPolicy(target_epsilon=3.0, delta=1e-5, max_grad_norm=1.0), total_rounds=2, seed=1)
    model = _model()
    for _ in range(2):
        session.begin_round()
        private_model, optimizer, loader = session.make_private(
            model, torch.optim.SGD(model.parameters(), lr=0.1), torch.utils.data.DataLoader(_data(), BATCH)
        )
        _train(private_model, optimizer, loader)
        spend = session.end_round()
        record = session.record()
        expected = _opacus_epsilon(session.noise_multiplier, 1 / (RECORDS // BATCH), session.steps, 1e-5)
        assert record["epsilon"] == pytest.approx(expected, abs=1e-6)
        assert spend.epsilon == pytest.approx(expected, abs=1e-6)
    assert session.steps == 2 * (RECORDS // BATCH) and session.sample_rate == pytest.approx(1 / 10)
    # the noise was calibrated for the whole job: all its steps spend the site's ε, not more
    assert 2.9 < session.epsilon() <= 3.0
    assert record["level"] == "record" and record["accountant"] == "rdp" and record["delta"] == 1e-5


def test_steps_beyond_the_planned_ones_are_not_taken_so_the_budget_holds():
    session = DPSession(RecordLevelPolicy(target_epsilon=2.0), total_rounds=1, seed=2)
    model = _model()
    session.begin_round()
    private_model, optimizer, loader = session.make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.1), torch.utils.data.DataLoader(_data(), BATCH), epochs=1
    )
    before_extra = None
    for epoch in range(3):  # the trainer declared 1 epoch but runs 3
        if epoch == 1:
            before_extra = {k: v.clone() for k, v in model.state_dict().items()}
        _train(private_model, optimizer, loader)
    spend = session.end_round()
    assert spend.steps == RECORDS // BATCH and spend.skipped > 0
    assert session.epsilon() <= 2.0
    # the skipped steps changed nothing: the model is the one after the planned steps
    assert all(torch.equal(before_extra[k], v) for k, v in model.state_dict().items())


def test_batchnorm_is_refused_naming_the_layer_and_the_fix():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2))
    with pytest.raises(
        DPModelError,
        match=r"layer '1' \(BatchNorm1d\).*flip\.privacy\.fix_model\(model\).*"
        r"ModuleValidator\.fix",
    ):
        check_model(model)
    fixed = fix_model(model)
    check_model(fixed)  # Opacus's fix (GroupNorm) trains privately
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fixed.modules())


def test_an_epsilon_the_training_cannot_reach_is_refused_naming_it():
    session = DPSession(RecordLevelPolicy(target_epsilon=1e-6), total_rounds=50)
    model = _model()
    session.begin_round()
    with pytest.raises(PrivacyError, match=r"ε=1e-06 at δ=1e-05 cannot be reached over 500 steps"):
        session.make_private(
            model, torch.optim.SGD(model.parameters(), lr=0.1), torch.utils.data.DataLoader(_data(), BATCH)
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"target_epsilon": 0}, "target_epsilon must be a finite number > 0, got 0"),
        ({"target_epsilon": float("nan")}, "target_epsilon must be a finite number > 0, got nan"),
        ({"target_epsilon": 8, "delta": 1.0}, "delta must be a finite number in"),
        ({"target_epsilon": 8, "max_grad_norm": -1}, "max_grad_norm must be a finite number > 0, got -1"),
        ({"target_epsilon": 8, "accountant": "gdp"}, "accountant must be one of"),
        ({"target_epsilon": 8, "total_epsilon": 4}, r"total_epsilon must be >= target_epsilon \(8\), got 4"),
        ({"level": "patient", "target_epsilon": 8}, "level must be one of"),
        ({}, "target_epsilon is required"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SitePrivacyPolicy(**kwargs)


def test_flips_local_dp_names_are_accepted_where_they_mean_the_same():
    """FLIP's LocalDifferentialPrivacy calls the L2 bound of an update ``clipping_norm`` (flip-local-dp.md)."""
    assert GaussianPrivacy(clipping_norm=2.0, noise_multiplier=1.0).clip_norm == 2.0
    assert SitePrivacyPolicy(epsilon=3.0, delta=1e-6).policy.target_epsilon == 3.0
    with pytest.raises(ValueError, match="name one setting"):
        SitePrivacyPolicy(epsilon=3.0, target_epsilon=8.0)
    with pytest.raises(ValueError, match="name one setting"):
        GaussianPrivacy(clip_norm=3.0, clipping_norm=2.0, noise_multiplier=1.0)


# -- the site's policy at work ---------------------------------------------------------------------------------
def _site(tmp_path, **policy_args):
    policy = SitePrivacyPolicy(**{"target_epsilon": 4.0, **policy_args})
    handler = ClientEventHandler()
    # the job's components first, the site's policy (from local/privacy.json) last
    engine = SiteEngine(tmp_path / "site-1", {"client_event_handler": handler, ComponentId.SITE_PRIVACY: policy})
    (tmp_path / "site-1" / "job-1").mkdir()  # the job's run folder (GaussianPrivacy counts its releases there)
    return engine, policy


def _raw_round(ctx: FLContext, model, rounds: int = 2):
    """One training task as a FLIP app runs it: make_private, train, the diff and the raw metrics it reports."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    private_model, optimizer, loader = make_private(
        model, optimizer, torch.utils.data.DataLoader(_data(), BATCH), ctx, epochs=1
    )
    steps = _train(private_model, optimizer, loader)
    diff = {k: (v - before[k]).numpy() for k, v in model.state_dict().items()}
    raw_norm = math.sqrt(sum(float(np.sum(d.astype(np.float64) ** 2)) for d in diff.values()))
    raw = {
        "loss": 0.4321,
        "accuracy": 0.8765,
        "num_samples": RECORDS - 7,
        "num_steps": steps,
        "update_norm": raw_norm,
        "patients_over_80": 3,
    }
    reply = DXO(
        DataKind.WEIGHT_DIFF,
        diff,
        meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps, FlipMeta.NUM_SAMPLES: RECORDS - 7, "cohort_size": RECORDS},
    ).to_shareable()
    return reply, raw


def _send(engine: SiteEngine, ctx: FLContext, reply: Shareable, raw: dict, job_filters=()) -> Shareable:
    """What NVFlare's ClientRunner does after the executor: AFTER_TASK_EXECUTION, the job's result filters,
    AFTER_TASK_RESULT_FILTER; returns the reply as it leaves."""
    ctx.set_prop(FLContextKey.TASK_RESULT, reply, private=True, sticky=False)
    ctx.set_prop(FlipProp.TASK_METRICS, raw, private=True, sticky=False)
    engine.fire(EventType.AFTER_TASK_EXECUTION, ctx)
    for job_filter in job_filters:
        reply = job_filter.process(reply, ctx)
    ctx.set_prop(FLContextKey.TASK_RESULT, reply, private=True, sticky=False)
    engine.fire(EventType.AFTER_TASK_RESULT_FILTER, ctx)
    return reply


def test_no_value_computed_on_the_sites_data_reaches_the_server(tmp_path):
    engine, policy = _site(tmp_path)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    model = _model()
    with policy.training(ctx, "project-1", total_rounds=2) as task:
        reply, raw = _raw_round(ctx, model)
        task.ok = True
    sent = _send(engine, ctx, reply, raw, job_filters=[PercentilePrivacy(percentile=10, gamma=0.5)])
    # the server's view: the message as it leaves (a copy, as the wire would carry it)
    from nvflare.app_common.decomposers import common_decomposers

    common_decomposers.register()
    received = Shareable.from_bytes(sent.to_bytes())
    metrics = received.get_header(FlipMeta.METRICS)
    dxo = from_shareable(received)
    sent_norm = math.sqrt(sum(float(np.sum(np.asarray(v, dtype=np.float64) ** 2)) for v in dxo.data.values()))
    public_weight = (RECORDS // BATCH) * BATCH
    assert set(metrics) == {"update_norm", "num_samples"}  # loss, accuracy, steps, the custom count: withheld
    assert metrics["update_norm"] == pytest.approx(sent_norm) and metrics["update_norm"] != pytest.approx(
        raw["update_norm"]
    )  # the norm of what left (after both filters), not the trainer's
    assert metrics["num_samples"] == public_weight != raw["num_samples"]
    assert dxo.meta[FlipMeta.NUM_SAMPLES] == public_weight and "cohort_size" not in dxo.meta
    every_number = [v for v in metrics.values()] + [v for v in dxo.meta.values() if isinstance(v, (int, float))]
    for name in ("loss", "accuracy", "num_samples", "update_norm", "patients_over_80"):
        assert raw[name] not in every_number, name
    record = dxo.meta[FlipMeta.PRIVACY][-1]
    assert record["filter"] == "SitePrivacyPolicy" and record["level"] == "record"
    assert record["epsilon"] == pytest.approx(
        _opacus_epsilon(record["noise_multiplier"], record["sample_rate"], record["steps"], 1e-5), abs=1e-6
    )


def test_a_result_not_trained_through_make_private_is_refused(tmp_path):
    engine, policy = _site(tmp_path)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    with (
        pytest.raises(TaskFailed, match="did not pass its model, optimizer and data loader through make_private"),
        policy.training(ctx, "project-1", total_rounds=2) as task,
    ):
        task.ok = True  # the trainer trained without DP-SGD
    # and a result reaching the filters without a private round is replaced by an error carrying no data
    reply = DXO(DataKind.WEIGHT_DIFF, {"w": np.ones(3, np.float32)}).to_shareable()
    sent = _send(engine, ctx, reply, {"loss": 0.5})
    assert sent.get_return_code() == ReturnCode.EXECUTION_EXCEPTION and sent.get("DXO") is None
    assert sent.get_header(FlipMeta.METRICS) is None


def test_client_level_within_the_policy_is_released_labelled(tmp_path):
    engine, policy = _site(tmp_path, level="client", target_epsilon=8.0)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    with policy.training(ctx, "project-1", total_rounds=2):
        reply = DXO(DataKind.WEIGHT_DIFF, {"w": np.full(4, 0.1, np.float32)}).to_shareable()
    sent = _send(
        engine,
        ctx,
        reply,
        {"loss": 0.5, "num_samples": 123},
        job_filters=[GaussianPrivacy(epsilon=8.0, rounds=2, seed=1)],
    )
    assert sent.get_return_code(ReturnCode.OK) == ReturnCode.OK
    assert set(sent.get_header(FlipMeta.METRICS)) == {"update_norm", "num_samples"}
    assert sent.get_header(FlipMeta.METRICS)["num_samples"] == 1
    record = from_shareable(sent).meta[FlipMeta.PRIVACY][-1]
    assert record["level"] == "client" and record["accountant"] == "rdp" and record["delta"] == 1e-5
    assert PrivacyLedger(ledger_path(tmp_path / "site-1")).budget("project-1").spent == pytest.approx(8.0)


def test_the_server_stops_training_cleanly_before_a_site_would_pass_its_epsilon(tmp_path):
    """Each released update says the ε so far and after one more round; the server's workflow stops (the model so
    far is kept, validated and uploaded) when a site's next round would pass its budget: here after the 2 planned
    rounds, and not before."""
    from flip.nvflare.controllers.training import budget_exceeded_next

    engine, policy = _site(tmp_path, target_epsilon=2.0)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    model = _model()
    reasons = []
    for round_num in (1, 2):
        with policy.training(ctx, "project-1", total_rounds=2) as task:
            reply, raw = _raw_round(ctx, model)
            task.ok = True
        sent = _send(engine, ctx, reply, raw)
        reasons.append(budget_exceeded_next(sent, "site-1", round_num + 1))
        assert from_shareable(sent).meta[FlipMeta.PRIVACY][-1]["epsilon"] <= 2.0
    assert reasons[0] is None
    assert re.fullmatch(r"privacy budget: site-1 would spend ε=\S+ > max_epsilon 2 in round 3", reasons[1])


def test_fedprox_still_pulls_towards_the_global_model_under_dp_sgd():
    """FedProx's term was a gradient hook, which Opacus's optimizer overwrites with its noised sum: under DP-SGD
    FedProx did nothing (the hook-only run below equals the run without it). Now it is added after the noise."""
    from flip.methods.fedprox import proximal_term

    def distance(mu: float, give_session: bool) -> float:
        session = DPSession(RecordLevelPolicy(target_epsilon=8.0), total_rounds=1, seed=5)
        model = _model()
        start = {k: v.clone() for k, v in model.state_dict().items()}
        session.begin_round()
        with proximal_term(model, mu, dp_session=session if give_session else None):
            private_model, optimizer, loader = session.make_private(
                model,
                torch.optim.SGD(model.parameters(), lr=0.5),
                torch.utils.data.DataLoader(_data(), BATCH),
                epochs=3,
            )
            _train(private_model, optimizer, loader, epochs=3)
        session.end_round()
        return math.sqrt(sum(float(((v - start[k]) ** 2).sum()) for k, v in model.state_dict().items()))

    plain = distance(0.0, False)
    assert distance(1.0, False) == pytest.approx(plain)  # the old hook: lost under DP-SGD
    assert distance(1.0, True) < 0.8 * plain


def test_make_private_without_a_flcontext_uses_the_running_training_task(tmp_path):
    """A MONAI ClientAlgo has no FLContext: flip.utils.make_private(model, optimizer, loader) finds the policy of
    the training task the runner is running; outside one, everything comes back unchanged."""
    from opacus.optimizers import DPOptimizer

    engine, policy = _site(tmp_path)
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(_data(), BATCH)
    assert make_private(model, optimizer, loader) == (model, optimizer, loader)
    with policy.training(ctx, "project-1", total_rounds=1) as task:
        private_model, private_optimizer, private_loader = make_private(model, optimizer, loader)
        _train(private_model, private_optimizer, private_loader)
        task.ok = True
    assert isinstance(private_optimizer, DPOptimizer) and policy.session.steps == RECORDS // BATCH
    assert make_private(model, optimizer, loader) == (model, optimizer, loader)
