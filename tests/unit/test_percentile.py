"""The percentile policy's math and its NVFlare filter, on small updates worked by hand and real DXOs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import FLContextKey
from nvflare.apis.fl_context import FLContext

from flip.constants import FlipTask
from flip.errors import PrivacyError
from flip.nvflare.components import PercentilePrivacy
from flip.privacy.percentile import percentile_filter, percentile_threshold

pytestmark = pytest.mark.unit


def test_hand_worked_example():
    update = {"w": np.array([0.001, -0.5, 0.02, 0.0, 0.3, 0.05])}
    # sorted |w| = 0, .001, .02, .05, .3, .5; 50th percentile sits halfway between .02 and .05
    assert percentile_threshold(update, 50) == pytest.approx(0.035)
    out, stats = percentile_filter(update, percentile=50, gamma=0.1)
    np.testing.assert_array_equal(out["w"], [0.0, -0.1, 0.0, 0.0, 0.1, 0.05])
    assert (stats.total, stats.shared, stats.clipped) == (6, 3, 2)
    assert update["w"][1] == -0.5  # not in place unless asked


def test_threshold_equals_numpy_percentile_across_tensors():
    rng = np.random.default_rng(3)
    update = {"a": rng.normal(size=(30, 7)).astype(np.float32), "b": rng.normal(size=11).astype(np.float32)}
    everything = np.concatenate([np.abs(v).ravel() for v in update.values()])
    for q in (0, 10, 33.3, 50, 90, 100):
        assert percentile_threshold(update, q) == np.percentile(everything, q)


def test_shared_fraction_is_one_minus_percentile():
    rng = np.random.default_rng(4)
    update = {"w": rng.normal(size=200_001).astype(np.float32)}
    for q in (10, 50, 95):
        _, stats = percentile_filter(update, q, gamma=10.0)
        assert stats.fraction_shared == pytest.approx(1 - q / 100, abs=1e-4)


def test_entries_at_the_threshold_are_not_shared():
    update = {"w": np.array([1.0, 1.0, 1.0, 2.0])}
    out, _ = percentile_filter(update, percentile=50, gamma=5.0)  # threshold is exactly 1.0
    np.testing.assert_array_equal(out["w"], [0.0, 0.0, 0.0, 2.0])


def test_num_steps_makes_gamma_a_per_step_bound():
    update = {"w": np.array([0.0, 0.4, -4.0])}
    out, _ = percentile_filter(update, percentile=0, gamma=0.1, num_steps=10)
    np.testing.assert_allclose(out["w"], [0.0, 0.4, -1.0])


def test_torch_tensors_and_dtypes_are_kept():
    update = {"h": torch.tensor([0.5, -0.01, 0.2], dtype=torch.bfloat16), "d": np.array([3.0, -0.001], np.float64)}
    out, _ = percentile_filter(update, percentile=40, gamma=0.25)
    assert out["h"].dtype == torch.bfloat16 and out["d"].dtype == np.float64
    assert out["h"].tolist() == [0.25, 0.0, 0.2001953125]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_updates_are_refused(bad):
    with pytest.raises(PrivacyError, match="update entry 'conv.weight' contains NaN or Inf"):
        percentile_filter({"conv.weight": np.array([0.1, bad, 0.3])}, 10, 0.01)


def test_integer_updates_are_refused():
    with pytest.raises(PrivacyError, match="update entry 'steps' has dtype int64: only floating-point"):
        percentile_filter({"steps": np.array([1, 2, 3])}, 10, 0.01)


def _shareable(kind, data, meta=None):
    return DXO(data_kind=kind, data=data, meta=meta or {}).to_shareable()


def test_filter_filters_weight_diff_dxo():
    diff = {"w": np.array([0.001, -0.5, 0.02, 0.0, 0.3, 0.05])}
    result = PercentilePrivacy(percentile=50, gamma=0.1).process(_shareable(DataKind.WEIGHT_DIFF, diff), FLContext())
    np.testing.assert_array_equal(from_shareable(result).data["w"], [0.0, -0.1, 0.0, 0.0, 0.1, 0.05])


def test_filter_honours_num_steps_meta():
    shareable = _shareable(
        DataKind.WEIGHT_DIFF, {"w": np.array([0.0, 0.4, -4.0])}, {MetaKey.NUM_STEPS_CURRENT_ROUND: 10}
    )
    result = PercentilePrivacy(percentile=0, gamma=0.1).process(shareable, FLContext())
    np.testing.assert_allclose(from_shareable(result).data["w"], [0.0, 0.4, -1.0])


def test_filter_refuses_full_weights():
    with pytest.raises(PrivacyError, match="refuses a WEIGHTS result for task None: only WEIGHT_DIFF can be filtered"):
        PercentilePrivacy().process(_shareable(DataKind.WEIGHTS, {"w": np.ones(4)}), FLContext())


def test_filter_refuses_nan_update():
    with pytest.raises(PrivacyError, match="contains NaN or Inf"):
        PercentilePrivacy().process(_shareable(DataKind.WEIGHT_DIFF, {"w": np.array([np.nan, 1.0])}), FLContext())


def test_filter_passes_metrics_of_a_validation_task_unchanged():
    # (METRICS pass for a non-training task only: see tests/hostile/test_site.py for the training-task refusal)
    fl_ctx = FLContext()
    fl_ctx.set_prop(FLContextKey.TASK_NAME, FlipTask.VALIDATE, private=True, sticky=False)
    result = PercentilePrivacy().process(_shareable(DataKind.METRICS, {"accuracy": 0.9}), fl_ctx)
    assert from_shareable(result).data == {"accuracy": 0.9}


def test_off_passes_everything_and_warns(caplog):
    diff = {"w": np.array([0.001, -0.5])}
    with caplog.at_level("WARNING"):
        result = PercentilePrivacy(off=True).process(_shareable(DataKind.WEIGHT_DIFF, diff), FLContext())
    np.testing.assert_array_equal(from_shareable(result).data["w"], [0.001, -0.5])
    assert "privacy filter is OFF" in caplog.text
