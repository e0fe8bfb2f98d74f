"""FedAvg by samples and the checks an update must pass before it is aggregated (plain numpy)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np


def check_update(update: Mapping[str, Any], reference: Mapping[str, Any], num_samples: Any) -> str | None:
    """Why ``update`` must not be aggregated (None if it may): every entry must be a finite float array named
    and shaped as in ``reference`` (the global model), and ``num_samples`` a positive integer."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
        return f"num_samples must be a positive integer, got {num_samples!r}"
    if not isinstance(update, Mapping) or not update:
        return "the update is empty"
    for name, value in update.items():
        if name not in reference:
            return f"parameter {name!r} is not in the global model"
        array = np.asarray(value)
        expected = np.shape(reference[name])
        if array.shape != expected:
            return f"parameter {name!r} has shape {array.shape}, the global model {expected}"
        if array.dtype.kind != "f":
            return f"parameter {name!r} has dtype {array.dtype}, expected floating point"
        if not np.isfinite(array).all():
            return f"parameter {name!r} holds NaN or Inf"
    return None


def weighted_mean(contributions: list[tuple[Mapping[str, Any], float]]) -> dict[str, np.ndarray]:
    """Per entry, the mean of the contributions holding it, weighted by their weights (e.g. sample counts)."""
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    dtypes: dict[str, np.dtype] = {}
    for arrays, weight in contributions:
        for name, value in arrays.items():
            value = np.asarray(value)
            dtypes.setdefault(name, value.dtype)
            total = sums.setdefault(name, np.zeros(value.shape))  # float64, accumulated in place
            total += np.multiply(value, float(weight), dtype=np.float64)
            totals[name] = totals.get(name, 0.0) + float(weight)
    return {name: (sums[name] / totals[name]).astype(dtypes[name]) for name in sums}


def l2_norm(arrays: Iterable[Any]) -> float:
    """The L2 norm of all of ``arrays`` taken as one vector (squares summed in float64)."""
    return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(a), dtype=np.float64))) for a in arrays)))


def checksum(weights: Mapping[str, Any]) -> float:
    """A fingerprint of a model's weights (sum of absolute values, float64, in name order): the same number on
    the server and a site for the same arrays."""
    return float(sum(float(np.abs(np.asarray(weights[k], dtype=np.float64)).sum()) for k in sorted(weights)))
