"""SWAG: a Gaussian over weights from the moments of SGD iterates (plain numpy).

Maddox et al., "A Simple Baseline for Bayesian Uncertainty in Deep Learning", NeurIPS 2019 (diagonal SWAG).
After training, every site continues training from the global model w for a few epochs and keeps the first and
second moments of its weights, sent as differences to the global model's (so they go through the same privacy
filter as any update): ``mean − w`` and ``mean(w_k²) − w²``. The server averages them weighted by samples:

    E[w]  = w  + Σ nᵢ·(meanᵢ − w) / Σ nᵢ
    E[w²] = w² + Σ nᵢ·(sqᵢ − w²) / Σ nᵢ
    var   = max(E[w²] − E[w]², 0)
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from flip.methods.weighted import check_finite, weighted_mean

#: the two parts of a site's SWAG result (a COLLECTION DXO)
MEAN, SECOND = "mean", "second"


def site_moments(snapshots: list[Mapping[str, Any]], global_weights: Mapping[str, Any]) -> tuple[dict, dict]:
    """A site's first and second moments of its weight snapshots, as differences to the global model's."""
    if not snapshots:
        raise ValueError("SWAG needs at least one weight snapshot")
    mean_diff, sq_diff = {}, {}
    for name, w in global_weights.items():
        stack = np.stack([np.asarray(s[name], dtype=np.float64) for s in snapshots])
        w = np.asarray(w, dtype=np.float64)
        dtype = np.asarray(global_weights[name]).dtype
        mean_diff[name] = (stack.mean(axis=0) - w).astype(dtype)
        sq_diff[name] = ((stack ** 2).mean(axis=0) - w ** 2).astype(dtype)
    return mean_diff, sq_diff


def aggregate(global_weights: Mapping[str, Any], sites: list[tuple[Mapping[str, Any], Mapping[str, Any], float]]
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """SWAG mean and diagonal variance from the sites' (mean_diff, sq_diff, num_samples).

    Raises:
        NonFiniteModelError: the mean or the variance is not finite in the model's dtype (never saved).
    """
    if not sites:
        raise ValueError("SWAG needs at least one site's moments")
    mean_d = weighted_mean([(m, n) for m, _, n in sites])
    sq_d = weighted_mean([(s, n) for _, s, n in sites])
    mean, variance = {}, {}
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, by name
        for name, d in mean_d.items():
            w = np.asarray(global_weights[name], dtype=np.float64)
            first = w + np.asarray(d, dtype=np.float64)
            second = w ** 2 + np.asarray(sq_d[name], dtype=np.float64)
            dtype = np.asarray(global_weights[name]).dtype
            mean[name] = first.astype(dtype)
            variance[name] = np.maximum(second - first ** 2, 0.0).astype(dtype)
    check_finite(mean, "the SWAG mean")
    check_finite(variance, "the SWAG variance")
    return mean, variance
