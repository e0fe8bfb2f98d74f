"""Client-level differential privacy: noise scale, exact clipping, calibration, budget, failing closed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import ReservedKey
from nvflare.apis.fl_context import FLContext

from flip.constants import FlipMeta
from flip.errors import PrivacyError
from flip.nvflare.components import GaussianPrivacy
from flip.privacy.gaussian import calibrate_noise, clip_and_noise, epsilon_after, make_rng
from tests.fakes import FakeEngine

pytestmark = pytest.mark.unit


def test_noise_has_the_right_scale():
    n = 400_000
    out, stats = clip_and_noise({"w": np.zeros(n)}, clip_norm=2.0, noise_multiplier=1.5, rng=make_rng(seed=7))
    sample_std = float(np.std(out["w"]))
    # the sample standard deviation of n normals has a relative standard error of 1/sqrt(2n): allow 5 of them
    assert abs(sample_std - 3.0) <= 3.0 * 5 / math.sqrt(2 * n)
    assert abs(float(np.mean(out["w"]))) <= 3.0 * 5 / math.sqrt(n)
    assert stats.noise_std == 3.0 and stats.scale == 1.0


def test_clipping_bound_holds_exactly():
    rng = np.random.default_rng(0)
    update = {"a": rng.normal(size=1000) * 10, "b": rng.normal(size=(20, 7)).astype(np.float32) * 10}
    out, stats = clip_and_noise(update, clip_norm=1.5, noise_multiplier=1e-300, rng=make_rng(seed=1))
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in out.values()))
    assert stats.norm > 1.5 and norm <= 1.5 * (1 + 1e-6)
    assert norm == pytest.approx(1.5, rel=1e-6)
    assert out["b"].dtype == np.float32
    small = {"a": np.array([0.3, 0.4])}  # norm 0.5 < 1.5: not scaled
    out, stats = clip_and_noise(small, clip_norm=1.5, noise_multiplier=1e-300, rng=make_rng(seed=1))
    assert stats.scale == 1.0 and out["a"].tolist() == pytest.approx([0.3, 0.4])


def test_read_only_scalars_and_fortran_arrays_are_clipped_in_a_copy_of_their_own_shape():
    scalar = np.array(3.0, dtype=np.float32)
    scalar.setflags(write=False)
    matrix = np.asfortranarray(np.full((3, 4), 1.0, dtype=np.float32))
    out, stats = clip_and_noise(
        {"s": scalar, "m": matrix}, clip_norm=1.0, noise_multiplier=1e-300, rng=make_rng(seed=1)
    )
    assert out["s"].shape == () and out["m"].shape == (3, 4)
    assert stats.norm == pytest.approx(math.sqrt(21))
    assert float(out["s"]) == pytest.approx(3 / math.sqrt(21), rel=1e-6)
    assert float(scalar) == 3.0  # the read-only input itself is untouched


@pytest.mark.parametrize("epsilon, rounds", [(8.0, 3), (1.0, 10), (3.0, 1)])
def test_calibration_round_trips_through_the_accountant(epsilon, rounds):
    z = calibrate_noise(epsilon, 1e-5, rounds)
    assert epsilon_after(rounds, z, 1e-5) == pytest.approx(epsilon, rel=0.01)
    assert epsilon_after(rounds + 1, z, 1e-5) > epsilon  # one more round spends more


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    assert epsilon_after(1, 2.0, 1e-5) < epsilon_after(5, 2.0, 1e-5)
    assert epsilon_after(5, 4.0, 1e-5) < epsilon_after(5, 2.0, 1e-5)


def test_unseeded_noise_is_not_repeatable():
    a, _ = clip_and_noise({"w": np.zeros(8)}, 1.0, 1.0, make_rng())
    b, _ = clip_and_noise({"w": np.zeros(8)}, 1.0, 1.0, make_rng())
    assert not np.array_equal(a["w"], b["w"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "give exactly one of noise_multiplier or epsilon"),
        ({"noise_multiplier": 1.0, "epsilon": 1.0, "rounds": 2}, "give exactly one of noise_multiplier or epsilon"),
        ({"epsilon": 8.0}, "epsilon needs rounds"),
        ({"noise_multiplier": -1.0}, r"noise_multiplier must be a finite number > 0 or None, got -1.0"),
        ({"noise_multiplier": 1.0, "clip_norm": 0}, r"clip_norm must be a finite number > 0, got 0"),
        ({"noise_multiplier": 1.0, "delta": 1.5}, r"delta must be a finite number in \(0, 1\), got 1.5"),
        ({"epsilon": 8.0, "rounds": 0}, r"rounds must be an integer >= 1 or None, got 0"),
        ({"noise_multiplier": float("nan")}, r"noise_multiplier must be a finite number > 0 or None, got nan"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianPrivacy(**kwargs)


def _ctx(tmp_path):
    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, FakeEngine(tmp_path, "site-1"), private=True, sticky=False)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=True, sticky=False)
    (tmp_path / "job-1").mkdir(exist_ok=True)
    return ctx


def _diff(values):
    return DXO(DataKind.WEIGHT_DIFF, data={"w": np.asarray(values, dtype=np.float64)}).to_shareable()


def test_filter_clips_noises_records_epsilon_and_stops_at_the_budget(tmp_path):
    ctx = _ctx(tmp_path)
    flt = GaussianPrivacy(clip_norm=1.0, epsilon=4.0, rounds=2, seed=3)
    spent = []
    for _ in range(2):
        out = from_shareable(flt.process(_diff([30.0, 40.0]), ctx))
        (record,) = out.get_meta_prop(FlipMeta.PRIVACY)
        spent.append(record["epsilon"])
        assert record["filter"] == "GaussianPrivacy" and record["max_epsilon"] == 4.0
    assert spent[0] < spent[1] == pytest.approx(4.0, rel=0.01)
    assert record["next_epsilon"] > 4.0  # the server sees the budget coming
    with pytest.raises(
        PrivacyError,
        match=r"privacy budget exhausted: releasing update 3 would spend ε=\S+ > "
        r"max_epsilon 4",
    ):
        flt.process(_diff([30.0, 40.0]), ctx)
    # the count survives a restart of the site (a new filter object, the same run folder)
    with pytest.raises(PrivacyError, match="privacy budget exhausted"):
        GaussianPrivacy(clip_norm=1.0, epsilon=4.0, rounds=2).process(_diff([1.0]), ctx)


@pytest.mark.parametrize("kind, data", [(DataKind.WEIGHTS, {"w": np.ones(3)}), (DataKind.METRICS, {"acc": 0.9})])
def test_filter_refuses_anything_but_weight_differences(tmp_path, kind, data):
    with pytest.raises(PrivacyError, match="GaussianPrivacy refuses a .* result for task None: only( a)? WEIGHT_DIFF"):
        GaussianPrivacy(noise_multiplier=1.0).process(DXO(kind, data=data).to_shareable(), _ctx(tmp_path))


def test_filter_refuses_non_finite_updates(tmp_path):
    with pytest.raises(PrivacyError, match="contains NaN or Inf"):
        GaussianPrivacy(noise_multiplier=1.0).process(_diff([1.0, np.inf]), _ctx(tmp_path))
