"""FedAvg by samples and the checks an update must pass before it is aggregated (plain numpy).

What one site can do to the average is bounded: its ``num_samples`` (its weight) by ``max_num_samples``, its
update's L2 norm by :func:`norm_outliers` (relative to the round's other updates) or an absolute cap, and an
average that is not finite in its dtype is refused (:func:`check_finite`), never saved or sent on.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from flip.errors import NonFiniteModelError

#: the largest ``num_samples`` one site may claim for one update (its weight in the average)
MAX_NUM_SAMPLES = 10_000_000
#: an update whose L2 norm is more than this many times the round's median update norm is excluded
NORM_RATIO_LIMIT = 10.0


def check_update(update: Mapping[str, Any], reference: Mapping[str, Any], num_samples: Any,
                 max_num_samples: int = MAX_NUM_SAMPLES) -> str | None:
    """Why ``update`` must not be aggregated (None if it may): every entry must be named and shaped as in
    ``reference`` (the global model), a finite floating-point array where the global entry is floating point, or
    an integer array where it is an integer (a counter such as BatchNorm's ``num_batches_tracked``) that keeps
    the global entry inside its dtype; and ``num_samples`` an integer in [1, max_num_samples]."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples <= 0:
        return f"num_samples must be a positive integer, got {num_samples!r}"
    if num_samples > max_num_samples:
        return f"num_samples {int(num_samples)} is more than max_num_samples ({max_num_samples})"
    if not isinstance(update, Mapping) or not update:
        return "the update is empty"
    for name, value in update.items():
        if name not in reference:
            return f"parameter {name!r} is not in the global model"
        array = np.asarray(value)
        expected = np.shape(reference[name])
        if array.shape != expected:
            return f"parameter {name!r} has shape {array.shape}, the global model {expected}"
        base = np.asarray(reference[name])
        if base.dtype.kind in "iu":
            if array.dtype.kind not in "iu":
                return f"parameter {name!r} has dtype {array.dtype}, the global model's is {base.dtype} (an integer)"
            info = np.iinfo(base.dtype)
            moved = base.astype(np.float64) + array.astype(np.float64)
            if moved.size and not (info.min <= moved.min() and moved.max() <= info.max):
                return f"parameter {name!r} would leave the range of {base.dtype}"
            continue
        if array.dtype.kind != "f":
            return f"parameter {name!r} has dtype {array.dtype}, expected floating point"
        if not np.isfinite(array).all():
            return f"parameter {name!r} holds NaN or Inf"
    return None


def float_entries(update: Mapping[str, Any]) -> list[Any]:
    """The floating-point entries of ``update`` (what its L2 norm is taken over: integer counters are not
    weights, and would make a site with more batches look like an outlier)."""
    return [v for v in update.values() if np.asarray(v).dtype.kind == "f"]


def norm_outliers(norms: Mapping[str, float], ratio_limit: float = NORM_RATIO_LIMIT) -> dict[str, str]:
    """The updates (by site) whose L2 norm is more than ``ratio_limit`` times the median of ``norms``, with why.

    Decide once every update of the round is in. What it guarantees: if more than half of the round's updates
    have a norm of at most B, the median is at most B and no update with a norm above ``ratio_limit``·B remains.
    With two updates the median is their mean, so (for ``ratio_limit`` >= 2) nothing is ever excluded: one site
    of two cannot be told from the other by norms; bound it with an absolute cap (``max_update_norm``). A median
    of 0 (most updates all zero) gives no scale and excludes nothing.
    """
    if not norms:
        return {}
    median = float(np.median(list(norms.values())))
    if not median > 0 or not math.isfinite(median):
        return {}
    limit = ratio_limit * median
    return {site: f"its update norm {norm:.3g} is more than {ratio_limit:g} times the round's median update norm "
                  f"{median:.3g}" for site, norm in norms.items() if not norm <= limit}


def check_finite(weights: Mapping[str, Any], what: str) -> None:
    """Raise NonFiniteModelError naming ``what`` and the first entry of ``weights`` holding NaN or Inf (numpy
    arrays or torch tensors; integer entries are always finite)."""
    for name, value in weights.items():
        if hasattr(value, "isfinite") and hasattr(value, "is_floating_point"):  # a torch tensor (bfloat16 too)
            finite = not value.is_floating_point() or bool(value.isfinite().all())
        else:
            array = np.asarray(value)
            finite = array.dtype.kind not in "fc" or bool(np.isfinite(array).all())
        if not finite:
            raise NonFiniteModelError(f"{what}: entry {name!r} holds NaN or Inf (or a value beyond its dtype)")


def weighted_mean(contributions: list[tuple[Mapping[str, Any], float]]) -> dict[str, np.ndarray]:
    """Per entry, the mean of the contributions holding it, weighted by their weights (e.g. sample counts).

    Sums are taken in float64; each mean is cast to the dtype of the first contribution holding the entry (an
    integer entry, e.g. a batch counter, is rounded to the nearest integer first).

    Raises:
        NonFiniteModelError: a mean is not finite, in float64 or after the cast (e.g. a float64 value beyond
            float32's range): an average that overflowed is never returned.
    """
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    dtypes: dict[str, np.dtype] = {}
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked below, by name
        for arrays, weight in contributions:
            for name, value in arrays.items():
                value = np.asarray(value)
                dtypes.setdefault(name, value.dtype)
                total = sums.setdefault(name, np.zeros(value.shape))  # float64, accumulated in place
                total += np.multiply(value, float(weight), dtype=np.float64)
                totals[name] = totals.get(name, 0.0) + float(weight)
        means = {name: _cast(sums[name] / totals[name], dtypes[name]) for name in sums}
    check_finite(means, "the weighted mean")
    return means


def _cast(mean: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``mean`` in ``dtype``: rounded first for an integer dtype (the mean of 5 and 6 batches is 6, not 5)."""
    return (np.rint(mean) if dtype.kind in "iu" else mean).astype(dtype)


def l2_norm(arrays: Iterable[Any]) -> float:
    """The L2 norm of all of ``arrays`` taken as one vector (squares summed in float64; inf if that overflows)."""
    with np.errstate(over="ignore"):
        return float(np.sqrt(sum(float(np.sum(np.square(np.asarray(a), dtype=np.float64))) for a in arrays)))


def checksum(weights: Mapping[str, Any]) -> float:
    """A fingerprint of a model's weights (sum of absolute values, float64, in name order): the same number on
    the server and a site for the same arrays."""
    return float(sum(float(np.abs(np.asarray(weights[k], dtype=np.float64)).sum()) for k in sorted(weights)))
