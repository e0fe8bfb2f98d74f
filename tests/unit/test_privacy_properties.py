"""Property tests of the percentile policy, a cross-check with NVFlare's built-in filter, and stage awareness."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy as NVFlarePercentilePrivacy

import flip.privacy.percentile as policy
from flip.constants import FlipMeta
from flip.errors import PrivacyError
from flip.nvflare.components import PercentilePrivacy, StagePercentilePrivacy
from flip.privacy.percentile import percentile_filter, percentile_threshold

pytestmark = pytest.mark.unit

DTYPES = (np.float16, np.float32, np.float64)


@st.composite
def updates(draw, max_tensors=6, max_size=60):
    dtype = draw(st.sampled_from(DTYPES))
    count = draw(st.integers(1, max_tensors))
    elements = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=np.finfo(dtype).bits)
    update = {}
    for i in range(count):
        shape = draw(
            st.sampled_from([(draw(st.integers(1, max_size)),), (draw(st.integers(1, 6)), draw(st.integers(1, 6)))])
        )
        update[f"layer{i}.weight"] = draw(arrays(dtype, shape, elements=elements))
    return update


percentiles = st.one_of(st.sampled_from([0.0, 10.0, 50.0, 100.0]), st.floats(0, 100))
gammas = st.floats(1e-3, 10.0)


def _numpy_threshold(update):
    return lambda q: np.percentile(np.concatenate([np.abs(v).ravel() for v in update.values()]), q)


_TORCH_DTYPE = {np.float16: torch.float16, np.float32: torch.float32, np.float64: torch.float64}


def _clipped(x, gamma):
    """x clipped to the largest value of its dtype not above gamma (what the policy promises)."""
    g = x.dtype.type(policy._round_down(gamma, _TORCH_DTYPE[x.dtype.type]))
    return np.clip(x, -g, g)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(update=updates(), q=percentiles, gamma=gammas)
def test_policy_properties(update, q, gamma):
    if any(v.dtype == np.float16 for v in update.values()) and q == 100:
        q = 99.0  # numpy.percentile itself returns nan for float16 at q=100 (its interpolation overflows)
    original = copy.deepcopy(update)
    out, stats = percentile_filter(update, q, gamma)
    threshold = _numpy_threshold(original)(q)
    assert stats.threshold == threshold
    assert list(out) == list(original)
    shared = 0
    for key, x in original.items():
        y = out[key]
        assert y.shape == x.shape and y.dtype == x.dtype
        assert np.all((y == 0) | (np.abs(y) <= gamma))  # every entry is 0 or within [-gamma, gamma]
        below = np.abs(x) <= threshold
        assert np.all(y[below] == 0)  # not greater than the threshold: not shared
        over = ~below
        np.testing.assert_array_equal(y[over], _clipped(x, gamma)[over])  # over it: the clipped input
        assert np.all(np.sign(y[over]) == np.sign(x[over]))
        assert not np.any(np.signbit(y[below]))  # zeros are +0.0
        shared += int(over.sum())
    assert stats.shared == shared and stats.total == sum(v.size for v in original.values())


@pytest.mark.parametrize("dtype", DTYPES)
def test_percentile_edges(dtype):
    x = {"w": np.array([0.5, -0.25, 0.125, -2.0], dtype=dtype)}
    out, stats = percentile_filter(x, 100, 1.0)
    assert np.all(out["w"] == 0) and stats.shared == 0  # the maximum is not greater than itself
    out, stats = percentile_filter(x, 0, 1.0)
    np.testing.assert_array_equal(out["w"], np.array([0.5, -0.25, 0.0, -1.0], dtype=dtype))  # only the minimum goes


def test_all_zero_update():
    out, stats = percentile_filter({"a": np.zeros(1000, np.float32), "b": np.zeros((3, 3), np.float32)}, 10, 0.01)
    assert stats.threshold == 0 and stats.shared == 0 and all(np.all(v == 0) for v in out.values())


def test_single_tensor_and_many_tiny_tensors():
    rng = np.random.default_rng(7)
    single = {"w": rng.normal(size=1).astype(np.float32)}
    out, stats = percentile_filter(single, 10, 0.5)
    assert stats.total == 1 and stats.shared == 0  # one value is its own percentile
    tiny = {f"t{i}": rng.normal(size=rng.integers(1, 4)).astype(np.float32) for i in range(500)}
    out, stats = percentile_filter(tiny, 30, 0.5)
    assert stats.threshold == _numpy_threshold(tiny)(30.0)
    assert stats.fraction_shared == pytest.approx(0.7, abs=0.01)


@pytest.mark.parametrize(
    "kind",
    ["normal", "half_zeros", "few_levels", "sparse", "huge_range", "float16", "bfloat16"],
)
def test_large_updates_take_the_streaming_path_exactly(kind):
    rng = np.random.default_rng(11)
    n = 3 * policy.SMALL_UPDATE + 17
    x = rng.normal(size=n).astype(np.float32)
    if kind == "half_zeros":
        x[: n // 2] = 0
    elif kind == "few_levels":
        x = rng.integers(-2, 3, size=n).astype(np.float32)
    elif kind == "sparse":
        x[rng.random(n) < 0.95] = 0
    elif kind == "huge_range":
        x *= np.float32(10.0) ** rng.integers(-30, 30, size=n).astype(np.float32)
    update = {"a": x[: n // 3], "b": x[n // 3 :].reshape(4, -1)}
    reference = {k: v.copy() for k, v in update.items()}
    if kind == "float16":
        update = {k: v.astype(np.float16) for k, v in update.items()}
        reference = {k: v.copy() for k, v in update.items()}
    if kind == "bfloat16":
        tensors = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in update.items()}
        as_f32 = {k: t.float().numpy() for k, t in tensors.items()}
        for q in (10.0, 90.0):
            assert percentile_threshold(tensors, q) == np.percentile(
                np.abs(np.concatenate([v.ravel() for v in as_f32.values()])), q
            )
        return
    for q in (0.0, 10.0, 50.0, 99.9):
        assert percentile_threshold(update, q) == _numpy_threshold(reference)(q), q


def test_streaming_path_is_exact_even_when_the_sample_misses(monkeypatch):
    monkeypatch.setattr(policy, "SAMPLE_SIZE", 4)  # a 4-value sample brackets nothing: the exact fallback runs
    rng = np.random.default_rng(5)
    update = {"w": rng.standard_cauchy(size=2 * policy.SMALL_UPDATE).astype(np.float32)}
    assert percentile_threshold(update, 10.0) == _numpy_threshold(update)(10.0)


# -- cross-check with NVFlare's built-in filter ------------------------------------------------------------------


def _nvflare(update, q, gamma, steps=None):
    meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: steps} if steps else {}
    dxo = DXO(DataKind.WEIGHT_DIFF, data={k: v.copy() for k, v in update.items()}, meta=meta)
    return NVFlarePercentilePrivacy(percentile=q, gamma=gamma).process_dxo(dxo, Shareable(), FLContext()).data


@pytest.mark.parametrize("steps", [None, 7])
@pytest.mark.parametrize("seed", range(6))
def test_same_result_as_nvflare_builtin(seed, steps):
    rng = np.random.default_rng(seed)
    update = {
        f"w{i}": (rng.normal(size=rng.integers(50, 5000)) * 10.0 ** rng.uniform(-4, 0)).astype(np.float32)
        for i in range(5)
    }
    q, gamma = float(rng.uniform(0, 99)), float(10.0 ** rng.uniform(-3, -1))
    theirs = _nvflare(update, q, gamma, steps)
    ours, stats = percentile_filter(update, q, gamma, num_steps=steps or 1)
    for key, x in update.items():
        at_threshold = np.abs(x / (steps or 1)) == np.float32(stats.threshold)  # the built-in shares these, we don't
        np.testing.assert_array_equal(ours[key][~at_threshold] == 0, theirs[key][~at_threshold] == 0)
        np.testing.assert_allclose(ours[key][~at_threshold], theirs[key][~at_threshold], rtol=1e-6, atol=1e-9)


# -- the NVFlare filters -----------------------------------------------------------------------------------------


def _diff(data, meta=None):
    return DXO(DataKind.WEIGHT_DIFF, data=data, meta=meta or {})


def test_both_stages_of_a_two_stage_update_are_filtered_with_their_own_threshold_and_steps():
    rng = np.random.default_rng(3)
    stage1 = {
        "unet.a": rng.normal(size=4000).astype(np.float32) * 0.5,
        "unet.b": rng.normal(size=300).astype(np.float32),
    }
    stage2 = {"decoder.c": rng.normal(size=2000).astype(np.float32) * 1e-3}
    meta = {
        FlipMeta.STAGE_PARAMS: {"stage1": list(stage1), "stage2": list(stage2)},
        FlipMeta.STAGE_STEPS: {"stage1": 10, "stage2": 4},
    }
    shareable = _diff(
        {**{k: v.copy() for k, v in stage1.items()}, **{k: v.copy() for k, v in stage2.items()}}, meta
    ).to_shareable()
    out = from_shareable(StagePercentilePrivacy(percentile=20, gamma=0.01).process(shareable, FLContext())).data
    expected1, _ = percentile_filter(stage1, 20, 0.01, num_steps=10)
    expected2, _ = percentile_filter(stage2, 20, 0.01, num_steps=4)
    for key, value in {**expected1, **expected2}.items():
        np.testing.assert_array_equal(out[key], value)  # every stage filtered, none left divided by its steps
    for stage, steps in (("stage1", 10), ("stage2", 4)):
        group = np.concatenate([out[k] for k in meta[FlipMeta.STAGE_PARAMS][stage]])
        assert np.abs(group).max() <= 0.01 * steps * (1 + 1e-6)
        assert 0.75 <= np.count_nonzero(group) / group.size <= 0.85


def test_a_collection_of_stage_updates_is_filtered_per_stage():
    rng = np.random.default_rng(4)
    parts = {
        s: {f"{s}.w": rng.normal(size=1000).astype(np.float32) * scale} for s, scale in (("s1", 1.0), ("s2", 1e-4))
    }
    collection = DXO(
        DataKind.COLLECTION,
        data={
            s: _diff({k: v.copy() for k, v in p.items()}, {MetaKey.NUM_STEPS_CURRENT_ROUND: 2})
            for s, p in parts.items()
        },
    )
    out = from_shareable(
        StagePercentilePrivacy(percentile=50, gamma=1.0).process(collection.to_shareable(), FLContext())
    )
    for stage, part in parts.items():
        expected, _ = percentile_filter(part, 50, 1.0, num_steps=2)
        np.testing.assert_array_equal(out.data[stage].data[f"{stage}.w"], expected[f"{stage}.w"])


def test_stage_filter_refuses_parameters_outside_every_stage():
    meta = {FlipMeta.STAGE_PARAMS: {"stage1": ["a"]}}
    with pytest.raises(PrivacyError, match="parameter 'b' belongs to no stage"):
        StagePercentilePrivacy().process(_diff({"a": np.ones(3), "b": np.ones(3)}, meta).to_shareable(), FLContext())


def test_stage_filter_refuses_full_weights_like_the_plain_filter():
    with pytest.raises(PrivacyError, match="refuses a WEIGHTS result"):
        StagePercentilePrivacy().process(DXO(DataKind.WEIGHTS, data={"a": np.ones(3)}).to_shareable(), FLContext())


def test_filters_never_return_the_update_unfiltered_on_failure():
    for cls in (PercentilePrivacy, StagePercentilePrivacy):
        with pytest.raises(PrivacyError):
            cls().process(_diff({"a": np.array([1.0, np.inf])}).to_shareable(), FLContext())
        with pytest.raises(PrivacyError):
            cls().process(_diff({"a": np.array([1, 2, 3])}).to_shareable(), FLContext())
