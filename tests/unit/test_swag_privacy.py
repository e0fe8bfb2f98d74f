"""SWAG under the sites' privacy filter: the variance the server builds stays within a stated tolerance of the
unfiltered one (benchmarks/swag_filter.py: the demo's digits, two sites, the demo trainer, the real filter)."""

from __future__ import annotations

import functools
import importlib.util

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.unit

#: the largest relative error of any layer's SWAG standard deviation the filter may cause
TOLERANCE = 0.10


@functools.cache
def _benchmark():
    spec = importlib.util.spec_from_file_location("_swag_filter_benchmark", REPO / "benchmarks" / "swag_filter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _errors(percentile: float, gamma: float) -> dict:
    """Both schemes' per-layer errors, on one set of SWAG snapshots (taken once)."""
    bench = _benchmark()
    return bench.compare(*_snapshots(), percentile, gamma)


@functools.cache
def _snapshots():
    bench = _benchmark()
    return bench.snapshots_per_site(bench.site_data(), 3, 5)


@pytest.mark.parametrize("percentile, gamma", [(10, 0.01), (25, 0.001), (50, 0.01)])
def test_swag_std_under_the_filter_is_within_tolerance_of_the_unfiltered_one(percentile, gamma):
    """Before the fix the sites sent mean(w_k²) − w² and the server took E[w²] − E[w]²: at (50, 0.01) the SWAG std
    of the first layer was off by 37% (at (25, 0.001) the last layer by 25%); with the deviation sent instead
    every layer stays within 5%. At the demo's own setting (10, 0.01) the filter changes nothing here."""
    errors, _ = _errors(percentile, gamma)["deviation"]
    assert errors and max(errors.values()) <= TOLERANCE, errors


def test_the_benchmark_sees_the_old_schemes_distortion():
    """The measurement can fail: the old scheme's error, measured the same way, is far above the tolerance."""
    errors, _ = _errors(50, 0.01)["moments"]
    assert max(errors.values()) > 2 * TOLERANCE, errors
