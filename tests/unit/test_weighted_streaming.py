"""Issue 21's speed-ups keep results: the streaming weighted mean against the float64 mean, the block L2 norm against
squares summed in float64, the per-entry local-model check against rebuilding the local model, the reused site model
against a freshly built one, the torch weight difference against numpy's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipMeta
from flip.errors import NonFiniteModelError
from flip.methods.weighted import StreamingWeightedMean, check_finite, l2_norm, weighted_mean
from flip.nvflare.components import SampleWeightedAggregator
from flip.nvflare.components.sample_weighted_aggregator import check_local_finite, reconstruct
from flip.nvflare.executors.run_trainer import weight_difference
from flip.nvflare.models import ReusedModel, load_weights
from tests.fakes import ServerEngine

pytestmark = pytest.mark.unit


def _updates(sites: int, seed: int = 0, dtype=np.float32) -> list[tuple[dict, int]]:
    """Model-update-like contributions: per layer a scale, sites differing around a common direction."""
    rng = np.random.default_rng(seed)
    common = {f"layer{i}": rng.standard_normal(20_000) * 10.0 ** -rng.integers(2, 5) for i in range(6)}
    return [
        (
            {k: (v + rng.standard_normal(v.shape) * 1e-3).astype(dtype) for k, v in common.items()},
            int(rng.integers(1, 5000)),
        )
        for _ in range(sites)
    ]


def _relative(a: dict, b: dict) -> float:
    num = math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)) for k in b))
    return num / math.sqrt(sum(float(np.sum(b[k].astype(np.float64) ** 2)) for k in b))


@pytest.mark.parametrize("sites", [2, 3, 8])
def test_streaming_mean_equals_the_float64_mean_within_1e_6(sites):
    contributions = _updates(sites, seed=sites)
    streaming = StreamingWeightedMean()
    for arrays, weight in contributions:
        streaming.add(arrays, weight)
    result, reference = streaming.result(), weighted_mean(contributions)
    assert {k: v.dtype for k, v in result.items()} == {k: v.dtype for k, v in reference.items()}
    assert _relative(result, reference) < 1e-6
    exact = weighted_mean([({k: v.astype(np.float64) for k, v in a.items()}, w) for a, w in contributions])
    assert _relative(result, exact) < 1e-6


def test_streaming_mean_of_float64_and_integer_entries_is_exact():
    contributions = [
        ({"w": np.array([1.0, 2.0]), "n": np.array(5, np.int64)}, 1),
        ({"w": np.array([4.0, -1.0]), "n": np.array(6, np.int64)}, 3),
    ]
    streaming = StreamingWeightedMean()
    for arrays, weight in contributions:
        streaming.add(arrays, weight)
    result = streaming.result()
    np.testing.assert_array_equal(result["w"], weighted_mean(contributions)["w"])
    assert result["n"].dtype == np.int64 and int(result["n"]) == int(weighted_mean(contributions)["n"]) == 6


@pytest.mark.parametrize(
    "contributions",
    [
        [({"w": np.array([1.0], np.float32)}, 1), ({"w": np.array([1e300])}, 1)],  # float64 mean beyond float32
        [({"w": np.array([1.0, 1.0], np.float16)}, 1), ({"w": np.array([3e5, 3e5], np.float32)}, 1)],
    ],
)
def test_streaming_mean_refuses_what_the_float64_mean_refuses(contributions):
    with pytest.raises(NonFiniteModelError, match="the weighted mean: entry 'w'"):
        weighted_mean(contributions)
    streaming = StreamingWeightedMean()
    for arrays, weight in contributions:
        streaming.add(arrays, weight)
    with pytest.raises(NonFiniteModelError, match="the weighted mean: entry 'w'"):
        streaming.result()


@pytest.mark.parametrize(
    "arrays",
    [
        [np.random.default_rng(1).standard_normal(3_000_001).astype(np.float32) * 1e-3],
        [np.random.default_rng(2).standard_normal(5000).astype(np.float16), np.arange(7, dtype=np.int64)],
        [np.array([3e38, -3e38], np.float32), np.array([1.0], np.float32)],  # overflows float32, not float64
        [torch.ones(10, dtype=torch.bfloat16)],
    ],
)
def test_block_norm_equals_squares_summed_in_float64(arrays):
    reference = math.sqrt(
        sum(
            float(np.sum(np.square(np.asarray(a, dtype=np.float64))))
            if not isinstance(a, torch.Tensor)
            else float(a.double().square().sum())
            for a in arrays
        )
    )
    assert math.isfinite(l2_norm(arrays))
    assert abs(l2_norm(arrays) - reference) <= 1e-6 * reference


def test_block_norm_is_inf_only_when_float64_overflows():
    assert l2_norm([np.array([1e300, 1e300])]) == math.inf


@pytest.mark.parametrize(
    "base, diff",
    [
        ({"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([0.5, -0.5], np.float32)}),
        ({"w": np.array([3e38], np.float32)}, {"w": np.array([3e38], np.float32)}),  # overflows in float32
        ({"w": np.array([1.0], np.float32)}, {"w": np.array([1e300])}),  # float64 update beyond float32
        ({"w": np.array([1.0], np.float32), "x": np.array([np.nan], np.float32)}, {"w": np.array([1.0], np.float32)}),
    ],
)
def test_local_check_without_a_copy_agrees_with_rebuilding_the_local_model(base, diff):
    try:
        check_finite(reconstruct(base, diff), "local")
        expected = None
    except NonFiniteModelError as exc:
        expected = str(exc)
    try:
        check_local_finite(base, diff, "local")
        got = None
    except NonFiniteModelError as exc:
        got = str(exc)
    assert got == expected


def _ctx(tmp_path, site: str, sites: list[str]) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, ServerEngine(tmp_path, sites=sites), private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, site, private=False, sticky=False)
    ctx.set_peer_context(peer)
    ctx.set_prop(AppConstants.CURRENT_ROUND, 0, private=True)
    ctx.set_prop(AppConstants.NUM_ROUNDS, 3, private=True)
    ctx.set_prop(
        AppConstants.GLOBAL_MODEL,
        make_model_learnable({f"layer{i}": np.zeros(20_000, np.float32) for i in range(6)}, {}),
        private=True,
    )
    return ctx


@pytest.mark.parametrize("sites, kept", [(2, False), (3, True)])
def test_aggregator_drops_updates_only_where_none_can_be_excluded_later(tmp_path, sites, kept):
    names = [f"site-{i}" for i in range(1, sites + 1)]
    aggregator = SampleWeightedAggregator()
    aggregator.reset(None)
    contributions = _updates(sites, seed=7)
    for site, (arrays, samples) in zip(names, contributions):
        shareable = DXO(DataKind.WEIGHT_DIFF, data=arrays, meta={FlipMeta.NUM_SAMPLES: samples}).to_shareable()
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        assert aggregator.accept(shareable, _ctx(tmp_path, site, names))
    assert all((update is not None) == kept for update, _ in aggregator.accepted.values())
    mean = from_shareable(aggregator.aggregate(_ctx(tmp_path, "site-1", names))).data
    assert _relative(mean, weighted_mean(contributions)) < 1e-6


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(4, 3)
        self.bn = torch.nn.BatchNorm1d(3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.bn(self.fc(x)))


def _float_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        k: rng.standard_normal(tuple(v.shape)).astype(np.float32)
        for k, v in _Net().state_dict().items()
        if v.is_floating_point()
    }


def test_reused_model_is_in_the_state_of_a_freshly_built_one():
    first = _float_weights(1)
    reused = ReusedModel(_Net(), first)
    model = reused.prepare(first, "global")
    # what a trainer does to it: train, freeze, count batches, switch to eval, leave gradients
    model(torch.ones(5, 4)).sum().backward()
    model.head.weight.requires_grad_(False)
    model.bn.num_batches_tracked += 7
    model.eval()
    second = _float_weights(2)
    assert reused.fits(second)
    again = reused.prepare(second, "global")
    fresh = _Net()
    load_weights(fresh, second, "global")
    assert again is model and again.training == fresh.training
    assert {k: v.tolist() for k, v in again.state_dict().items()} == {
        k: v.tolist() for k, v in fresh.state_dict().items()
    }
    assert all(p.grad is None and p.requires_grad for p in again.parameters())


def test_a_model_the_user_changed_is_not_reused():
    weights = _float_weights(1)
    reused = ReusedModel(_Net(), weights)
    reused.model.head = torch.nn.Linear(3, 5)
    assert not reused.fits(weights)
    assert not ReusedModel(_Net(), weights).fits({k: v for k, v in weights.items() if k != "fc.bias"})


def test_weight_difference_in_torch_equals_numpy():
    model = _Net()
    received = {k: v + np.float32(0.25) for k, v in _float_weights(3).items()}
    received["fc.bias"] = received["fc.bias"].astype(np.float64)  # a received dtype other than the model's
    names = list(received)
    diff = weight_difference(model, received, names)
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for name in names:
        expected = (state[name] - received[name]).astype(state[name].dtype)
        assert diff[name].dtype == expected.dtype
        np.testing.assert_array_equal(diff[name], expected)
