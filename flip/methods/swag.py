"""SWAG: a Gaussian over weights from the moments of SGD iterates (plain numpy).

Maddox et al., "A Simple Baseline for Bayesian Uncertainty in Deep Learning", NeurIPS 2019 (diagonal SWAG).
After training, every site continues training from the global model w for a few epochs, keeping snapshots w_k of
its weights. It sends, through the same privacy filter as any update, two differences of the weights' own scale:

    mean_i − w                    (its snapshots' mean, as a difference to the global model)
    dev_i = sqrt(mean_k (w_k − mean_i)²)   (each weight's standard deviation around the site's own mean)

and the server pools them with the law of total variance, weighted by samples (N = Σ nᵢ, m̄ = Σ nᵢ·(meanᵢ − w)/N):

    E[w]   = w + m̄
    Var[w] = Σ nᵢ·(devᵢ² + (meanᵢ − w − m̄)²) / N

This is exactly the variance of all sites' snapshots pooled, and it is ≥ 0 whatever the filter does to each part:
the filter zeroes small entries and clips large ones of each part, which changes a variance only by what it changes
in that part. (The earlier form sent the second moment ``mean(w_k²) − w²`` and took ``E[w²] − E[w]²`` at the
server: a difference of two large, independently filtered numbers whose error swamped the variance and had to be
clamped at 0; ``benchmarks/swag_filter.py`` measures both.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flip.methods.weighted import check_finite, weighted_mean

#: the two parts of a site's SWAG result (a COLLECTION DXO): the mean's difference to the global model, and the
#: per-weight standard deviation of the site's snapshots around their mean
MEAN, DEVIATION = "mean", "deviation"


def site_moments(snapshots: list[Mapping[str, Any]], global_weights: Mapping[str, Any]) -> tuple[dict, dict]:
    """A site's SWAG statistics of its weight snapshots: (mean − global, standard deviation), each in the weights'
    dtype.

    Raises:
        ValueError: no snapshot.
    """
    if not snapshots:
        raise ValueError("SWAG needs at least one weight snapshot")
    mean_diff, deviation = {}, {}
    for name, w in global_weights.items():
        stack = np.stack([np.asarray(s[name], dtype=np.float64) for s in snapshots])
        dtype = np.asarray(w).dtype
        mean = stack.mean(axis=0)
        mean_diff[name] = (mean - np.asarray(w, dtype=np.float64)).astype(dtype)
        deviation[name] = np.sqrt(((stack - mean) ** 2).mean(axis=0)).astype(dtype)
    return mean_diff, deviation


def negative_deviation(deviation: Mapping[str, Any]) -> str | None:
    """Why a site's deviation cannot be one (a negative entry, named), or None."""
    for name, value in deviation.items():
        if np.any(np.asarray(value) < 0):
            return f"its SWAG deviation {name!r} has negative entries"
    return None


def aggregate(
    global_weights: Mapping[str, Any], sites: list[tuple[Mapping[str, Any], Mapping[str, Any], float]]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """SWAG mean and diagonal variance from the sites' (mean_diff, deviation, num_samples), by the law of total
    variance (see the module).

    Raises:
        ValueError: no site.
        NonFiniteModelError: the mean or the variance is not finite in the model's dtype (never saved).
    """
    if not sites:
        raise ValueError("SWAG needs at least one site's moments")
    total = float(sum(n for _, _, n in sites))
    mean_d = weighted_mean([(m, n) for m, _, n in sites])
    mean, variance = {}, {}
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, by name
        for name, d in mean_d.items():
            w = np.asarray(global_weights[name], dtype=np.float64)
            shift = np.asarray(d, dtype=np.float64)
            pooled = np.zeros_like(w)
            for m, dev, n in sites:
                spread = np.asarray(m[name], dtype=np.float64) - shift
                pooled += (n / total) * (np.asarray(dev[name], dtype=np.float64) ** 2 + spread**2)
            dtype = np.asarray(global_weights[name]).dtype
            mean[name] = (w + shift).astype(dtype)
            variance[name] = pooled.astype(dtype)
    check_finite(mean, "the SWAG mean")
    check_finite(variance, "the SWAG variance")
    return mean, variance
