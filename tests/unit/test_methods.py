"""Aggregation, uncertainty and trainer-option math, and the aggregator's acceptance rules on real DXOs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipMeta, RunFile
from flip.errors import AggregationFailed
from flip.jobs import DEMO_APP_DIR, write_job
from flip.methods import swag
from flip.methods.feddc import daisy_chain, is_aggregation_round
from flip.methods.fedprox import proximal_term
from flip.methods.weighted import check_update, weighted_mean
from flip.nvflare.components import SampleWeightedAggregator
from flip.nvflare.executors.user_code import TaskContext, build_model, instantiate, load_class
from flip.uncertainty import ensemble_predict, mc_dropout_predict, swag_sample
from tests.fakes import FakeEngine

pytestmark = pytest.mark.unit

GLOBAL = {"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)}


# -- FedAvg by samples and the acceptance rules -------------------------------------------------------------------


def test_weighted_mean_uses_sample_counts():
    mean = weighted_mean([({"w": np.array([1.0])}, 1), ({"w": np.array([4.0])}, 3)])
    assert mean["w"].tolist() == [3.25]  # (1*1 + 3*4) / 4; unweighted FedAvg would give 2.5


def _ctx(tmp_path, site, round_num):
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path, "server"), private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    ctx.set_prop(AppConstants.CURRENT_ROUND, round_num, private=True)
    ctx.set_prop(AppConstants.NUM_ROUNDS, 3, private=True)
    ctx.set_prop(AppConstants.GLOBAL_MODEL, make_model_learnable(GLOBAL, {}), private=True)
    return ctx


def _update(diff, samples=10, round_num=0, kind=DataKind.WEIGHT_DIFF):
    shareable = DXO(kind, data=diff, meta={FlipMeta.NUM_SAMPLES: samples}).to_shareable()
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_num)
    return shareable


GOOD = {"w": np.array([0.1, -0.1], np.float32), "b": np.array([0.2], np.float32)}


@pytest.mark.parametrize(
    "update, reason",
    [
        (_update(GOOD, round_num=1), "it is for round 2, this is round 1"),
        (_update({"w": np.array([np.nan, 0.0], np.float32)}), "parameter 'w' holds NaN or Inf"),
        (_update({"w": np.zeros(3, np.float32)}), "parameter 'w' has shape (3,), the global model (2,)"),
        (_update({"extra": np.zeros(2, np.float32)}), "parameter 'extra' is not in the global model"),
        (_update(GOOD, samples=0), "num_samples must be a positive integer, got 0"),
        (_update(GOOD, kind=DataKind.WEIGHTS), "it is WEIGHTS, expected WEIGHT_DIFF"),
    ],
)
def test_bad_updates_are_excluded_with_a_reason(tmp_path, update, reason):
    aggregator = SampleWeightedAggregator(min_accepted=1)
    aggregator.reset(None)
    assert aggregator.accept(update, _ctx(tmp_path, "site-3", 0)) is False
    assert aggregator.excluded == {"site-3": reason}


def test_a_second_update_from_the_same_site_is_excluded(tmp_path):
    aggregator = SampleWeightedAggregator()
    aggregator.reset(None)
    assert aggregator.accept(_update(GOOD), _ctx(tmp_path, "site-1", 0))
    assert not aggregator.accept(_update(GOOD), _ctx(tmp_path, "site-1", 0))
    assert aggregator.excluded == {"site-1": "site-1 already sent its update for round 1"}


def test_aggregate_weights_by_samples_and_keeps_local_models_on_disk_when_asked(tmp_path):
    aggregator = SampleWeightedAggregator(min_accepted=2, delete_local_models_after_aggregation=False)
    aggregator.reset(None)
    assert aggregator.accept(_update({"w": np.array([1.0, 1.0], np.float32)}, samples=1), _ctx(tmp_path, "site-1", 0))
    assert aggregator.accept(_update({"w": np.array([5.0, 5.0], np.float32)}, samples=3), _ctx(tmp_path, "site-2", 0))
    result = from_shareable(aggregator.aggregate(_ctx(tmp_path, "site-2", 0)))
    np.testing.assert_allclose(result.data["w"], [4.0, 4.0])
    local = torch.load(tmp_path / "job-1" / RunFile.LOCAL_MODELS_DIR / "round_1" / "site-2.pt", weights_only=True)
    np.testing.assert_allclose(local["w"].numpy(), [6.0, 7.0])  # the global model plus the site's update


def test_by_default_no_local_model_is_ever_written_to_the_servers_disk(tmp_path):
    """DLR's default delete_local_models_after_aggregation=True: the local models live in memory for the round only
    (the old aggregator wrote every site's full model to local_models/round_<n>/ each round, then deleted it)."""
    aggregator = SampleWeightedAggregator()
    assert aggregator.delete_local_models_after_aggregation is True
    aggregator.reset(None)
    assert aggregator.accept(_update(GOOD), _ctx(tmp_path, "site-1", 0))
    assert not (tmp_path / "job-1" / RunFile.LOCAL_MODELS_DIR).exists()
    aggregator.aggregate(_ctx(tmp_path, "site-1", 0))
    assert not (tmp_path / "job-1").exists() or not list((tmp_path / "job-1").rglob("*.pt"))


def test_the_ensemble_is_built_from_memory_with_local_models_deleted(tmp_path):
    """The ensemble needs no local model file: with DLR's default (delete) it is still written on the last round
    (the old job builder refused ensemble with delete_local_models_after_aggregation=True)."""
    aggregator = SampleWeightedAggregator(ensemble=True)
    aggregator.reset(None)
    assert aggregator.accept(_update(GOOD, round_num=2), _ctx(tmp_path, "site-1", 2))
    aggregator.aggregate(_ctx(tmp_path, "site-1", 2))
    members = torch.load(tmp_path / "job-1" / RunFile.ARTIFACTS_DIR / RunFile.ENSEMBLE, weights_only=True)
    np.testing.assert_allclose(members["site-1"]["w"].numpy(), GLOBAL["w"] + GOOD["w"])
    assert not (tmp_path / "job-1" / RunFile.LOCAL_MODELS_DIR).exists()


def test_too_few_accepted_updates_fail_the_round_naming_why(tmp_path):
    aggregator = SampleWeightedAggregator(min_accepted=2)
    aggregator.reset(None)
    aggregator.accept(_update(GOOD), _ctx(tmp_path, "site-1", 0))
    aggregator.accept(_update(GOOD, samples=-5), _ctx(tmp_path, "site-2", 0))
    with pytest.raises(AggregationFailed, match=r"round 1: 1 update\(s\) accepted, 2 needed \(site-2: num_samples"):
        aggregator.aggregate(_ctx(tmp_path, "site-1", 0))


def test_check_update_accepts_a_good_update():
    assert check_update(GOOD, GLOBAL, 12) is None


# -- FedProx -------------------------------------------------------------------------------------------------------


def test_proximal_hook_gives_the_fedprox_gradient():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    anchor = {k: v.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3)
    x, y = torch.randn(4, 3), torch.randn(4, 2)
    mu = 0.7
    with proximal_term(model, 0.0):  # mu=0 (FedProx off) enters and leaves without raising
        pass
    # explicit FedProx objective (anchor = the weights the round started from)
    explicit = torch.nn.Linear(3, 2)
    explicit.load_state_dict(model.state_dict())
    loss = torch.nn.functional.mse_loss(explicit(x), y) + mu / 2 * sum(
        ((p - anchor[n]) ** 2).sum() for n, p in explicit.named_parameters()
    )
    loss.backward()
    # the hook, anchored at the round's start: reset the model to the anchor, move it, then backprop the plain loss
    hooked = torch.nn.Linear(3, 2)
    hooked.load_state_dict({k: anchor[k] for k in anchor})
    with proximal_term(hooked, mu):
        with torch.no_grad():
            for p in hooked.parameters():
                p.add_(0.3)
        torch.nn.functional.mse_loss(hooked(x), y).backward()
    for (name, a), b in zip(explicit.named_parameters(), hooked.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.fixture(scope="module")
def site_data(tmp_path_factory):
    from flip.demo.data import write_cohorts

    root = tmp_path_factory.mktemp("prox")
    write_cohorts(root, ["site-1", "site-2"])
    return root / "cohorts" / "site-1"


def _distance_after_training(site_data, mu):
    model = build_model(DEMO_APP_DIR)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = instantiate(
        load_class(DEMO_APP_DIR, "trainer.py", "FLIP_TRAINER", ("train",)),
        {"LOCAL_ROUNDS": 3, "LEARNING_RATE": 0.05},
        "trainer.py",
    )
    with proximal_term(model, mu):
        trainer.train(model, TaskContext("site-1", "job", 0, 1, site_data, {}))
    return float(sum(((model.state_dict()[k] - start[k]) ** 2).sum() for k in start) ** 0.5)


def test_fedprox_keeps_the_local_model_closer_to_the_global_one_with_the_users_trainer_unchanged(site_data):
    plain, prox = _distance_after_training(site_data, 0.0), _distance_after_training(site_data, 1.0)
    assert prox < 0.8 * plain, (prox, plain)


# -- FedDC ---------------------------------------------------------------------------------------------------------


def test_daisy_chain_is_a_seeded_derangement():
    sites = ["site-1", "site-2", "site-3", "site-4"]
    routes = [daisy_chain(sites, 7, r) for r in range(6)]
    for routing in routes:
        assert sorted(routing) == sites and sorted(routing.values()) == sites
        assert all(receiver != sender for receiver, sender in routing.items())
    assert routes == [daisy_chain(sites, 7, r) for r in range(6)]  # seeded: the same again
    assert len({tuple(sorted(r.items())) for r in routes}) > 1  # and not the same every round


def test_aggregation_rounds():
    assert [r for r in range(7) if is_aggregation_round(r, 3, 7)] == [2, 5, 6]
    assert [r for r in range(4) if is_aggregation_round(r, 1, 4)] == [0, 1, 2, 3]  # period 1 is FedAvg


# -- SWAG ----------------------------------------------------------------------------------------------------------


def test_swag_moments_and_aggregation_by_hand():
    g = {"w": np.array([1.0, 0.0])}
    mean_a, dev_a = swag.site_moments([{"w": np.array([1.0, 1.0])}, {"w": np.array([3.0, 1.0])}], g)
    np.testing.assert_allclose(mean_a["w"], [1.0, 1.0])  # mean [2, 1] - [1, 0]
    np.testing.assert_allclose(dev_a["w"], [1.0, 0.0])  # each weight's std around the site's mean [2, 1]
    mean_b, dev_b = swag.site_moments([{"w": np.array([2.0, 3.0])}], g)  # one snapshot: mean [2, 3], std 0
    mean, var = swag.aggregate(g, [(mean_a, dev_a, 1), (mean_b, dev_b, 3)])
    # E[w] = (1*[2,1] + 3*[2,3]) / 4 = [2, 2.5]; E[w^2] = (1*[5,1] + 3*[4,9]) / 4 = [4.25, 7]
    np.testing.assert_allclose(mean["w"], [2.0, 2.5])
    np.testing.assert_allclose(var["w"], [0.25, 0.75])  # [4.25 - 4, 7 - 6.25]: the pooled snapshots' variance


def test_swag_variance_cannot_go_negative_whatever_the_parts_are():
    """Pooled by the law of total variance, any mean and non-negative deviation give a variance >= 0 (the old
    E[w²] − E[w]² went negative when the filter zeroed a second moment, and was clamped at 0)."""
    g = {"w": np.array([1.0, -3.0])}
    _, var = swag.aggregate(
        g,
        [
            ({"w": np.array([0.5, 0.0])}, {"w": np.array([0.0, 0.0])}, 1),
            ({"w": np.array([0.0, 0.2])}, {"w": np.array([0.1, 0.0])}, 2),
        ],
    )
    np.testing.assert_allclose(
        var["w"], [(0.25 * 1 / 9 * 4 + 2 * (0.01 + 1 / 36)) / 3, 2 / 3 * (0.2 / 3) ** 2 + 1 / 3 * (0.4 / 3) ** 2]
    )
    assert swag.negative_deviation({"w": np.array([0.1, -0.1])}) == "its SWAG deviation 'w' has negative entries"


def test_swag_samples_follow_mean_and_variance():
    samples = swag_sample(
        {"mean": {"w": torch.tensor([1.0, -2.0])}, "variance": {"w": torch.tensor([4.0, 0.0])}}, 4000, seed=1
    )
    stacked = torch.stack([s["w"] for s in samples]).double()
    assert stacked[:, 0].mean().item() == pytest.approx(1.0, abs=0.1)
    assert stacked[:, 0].std().item() == pytest.approx(2.0, rel=0.05)
    assert torch.all(stacked[:, 1] == -2.0)


# -- uncertainty helpers -------------------------------------------------------------------------------------------


def test_ensemble_prediction_mean_and_spread():
    def build():
        return torch.nn.Linear(1, 2, bias=False)

    members = {"a": {"weight": torch.tensor([[0.0], [0.0]])}, "b": {"weight": torch.tensor([[10.0], [0.0]])}}
    mean, std = ensemble_predict(build, members, torch.ones(1, 1))
    # member a: softmax(0, 0) = (.5, .5); member b: softmax(10, 0) ~ (1, 0)
    assert mean[0, 0].item() == pytest.approx((0.5 + 1 / (1 + np.exp(-10))) / 2, rel=1e-5)
    assert std[0, 0].item() == pytest.approx(abs(1 / (1 + np.exp(-10)) - 0.5) / 2, rel=1e-5)


def test_mc_dropout_needs_dropout_and_spreads_with_it():
    model = build_model(DEMO_APP_DIR)  # the demo model has dropout
    _, std = mc_dropout_predict(model, torch.rand(5, 8, 8), samples=10)
    assert std.max().item() > 0
    assert not model.layers[3].training  # dropout is switched off again afterwards
    with pytest.raises(ValueError, match="needs a model with dropout layers"):
        mc_dropout_predict(torch.nn.Linear(64, 10), torch.rand(2, 64))


# -- options -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"aggregation": "fedmedian"}, r"aggregation must be one of \['fedavg', 'fedprox', 'feddc'\], got 'fedmedian'"),
        ({"uncertainty": "bayes"}, r"uncertainty must be one of \['none', 'ensemble', 'mc_dropout', 'swag'\]"),
        ({"aggregation": "fedprox", "fedprox_mu": 0}, r"aggregation 'fedprox' needs fedprox_mu > 0, got 0"),
        ({"keep_best": "accuracy", "skip_model_tests": True}, "keep_best='accuracy' selects on the per-round tests"),
        ({"keep_best": "accuracy", "model_test_after_each_round": False}, "needs model_test_after_each_round=True"),
        ({"keep_best": "loss", "keep_best_mode": "lowest"}, r"keep_best_mode must be one of \['max', 'min'\]"),
        (
            {"initial_model": "not-a-model"},
            "initial_model must be MODEL_ID or MODEL_ID/RUN_ID: model_id must be a UUID",
        ),
        (
            {"initial_model": "5f2b7c1e-9d4a-4e3b-8c6f-1a2b3c4d5e6f/../x"},
            "initial_model must be MODEL_ID or MODEL_ID/RUN_ID",
        ),
        ({"keep_round_models": "yes"}, "keep_round_models must be True or False"),
        ({"aggregation": "feddc", "daisy_chain_period": 0}, r"daisy_chain_period must be an integer >= 1, got 0"),
    ],
)
def test_bad_method_options_are_named(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        write_job("standard", tmp_path, **options)
