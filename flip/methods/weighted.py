"""FedAvg by samples and the checks an update must pass before it is aggregated (numpy and torch, no nvflare).

What one site can do to the average is bounded: its ``num_samples`` (its weight) by ``max_num_samples``, its
update's L2 norm by :func:`norm_outliers` (relative to the round's other updates) or an absolute cap, and an
average that is not finite in its dtype is refused (:func:`check_finite`), never saved or sent on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from flip.errors import NonFiniteModelError

#: the largest ``num_samples`` one site may claim for one update (its weight in the average)
MAX_NUM_SAMPLES = 10_000_000
#: an update whose L2 norm is more than this many times the round's median update norm is excluded
NORM_RATIO_LIMIT = 10.0


def check_update(
    update: Mapping[str, Any], reference: Mapping[str, Any], num_samples: Any, max_num_samples: int = MAX_NUM_SAMPLES
) -> str | None:
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
            moved = np.asarray(base.astype(object) + array.astype(object), dtype=object)  # python ints: exact
            if moved.size and not (info.min <= min(moved.flat) and max(moved.flat) <= info.max):
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
    return {
        site: f"its update norm {norm:.3g} is more than {ratio_limit:g} times the round's median update norm "
        f"{median:.3g}"
        for site, norm in norms.items()
        if not norm <= limit
    }


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
    return (np.rint(mean) if dtype.kind in "iu" else mean).astype(dtype, copy=False)


#: elements per block whose norm is taken in the array's own dtype (the blocks' norms are combined in float64)
NORM_BLOCK = 4096


def l2_norm(arrays: Iterable[Any]) -> float:
    """The L2 norm of all of ``arrays`` (numpy arrays or torch tensors) taken as one vector; inf only if it
    overflows float64.

    Blocks of NORM_BLOCK elements are normed by torch in the array's own floating dtype (float16/bfloat16 and integers
    in float32/float64), the blocks' norms combined in float64; an array with a block whose norm overflows its dtype
    is taken again in float64. Against squares summed in float64 the relative difference stays below 1e-6
    (tests/unit/test_weighted_streaming.py), without a float64 copy of the array.
    """
    total = 0.0
    for array in arrays:
        flat = as_tensor(array).reshape(-1)
        if not flat.is_floating_point():
            flat = flat.to(torch.float64)
        elif flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.to(torch.float32)
        squares = _block_squares(flat)
        if not math.isfinite(squares) and flat.dtype != torch.float64:
            squares = float(torch.linalg.vector_norm(flat, dtype=torch.float64)) ** 2
        total += squares
    return math.sqrt(total)


def _block_squares(flat: torch.Tensor) -> float:
    """The sum of squares of a 1-d tensor: its blocks' norms in its dtype, squared and summed in float64."""
    whole = flat.numel() // NORM_BLOCK * NORM_BLOCK
    squares = 0.0
    if whole:
        norms = torch.linalg.vector_norm(flat[:whole].view(-1, NORM_BLOCK), dim=1)
        squares += float(norms.to(torch.float64).square().sum())
    if whole < flat.numel():
        squares += float(torch.linalg.vector_norm(flat[whole:]).to(torch.float64)) ** 2
    return squares


def as_tensor(value: Any) -> torch.Tensor:
    """``value`` as a CPU tensor, sharing a numpy array's memory where torch can (it is only read: a read-only array
    is fine). A float type torch lacks (long double) is taken as float64: a value beyond it becomes Inf, and fails."""
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value)
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        array = array.astype(np.float64)
    elif array.dtype.byteorder not in "=|":
        array = array.astype(array.dtype.newbyteorder("="))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable": nothing writes to it
        return torch.as_tensor(array)


def value_dtype(value: Any) -> np.dtype:
    """The numpy dtype of an array or tensor (bfloat16, which numpy lacks, as float32)."""
    if isinstance(value, torch.Tensor):
        return (
            np.dtype(np.float32) if value.dtype == torch.bfloat16 else torch.empty(0, dtype=value.dtype).numpy().dtype
        )
    return np.asarray(value).dtype


class StreamingWeightedMean:
    """FedAvg's weighted mean taken as contributions arrive: each is folded into a running mean and may be dropped.

    Per entry, the running mean ``m += (w / W) · (u − m)`` (``torch.lerp``, in place, no temporary) is kept in float32
    for float32 and narrower entries and in float64 for float64 ones (an entry becomes float64 when a float64
    contribution arrives) and for integer entries (counters, rounded at the end). Against the float64 sums of
    :func:`weighted_mean` the difference stays below 1e-6 relative on model updates (tested); being a running mean,
    no intermediate value is larger than the contributions themselves, except when two contributions of opposite
    sign each exceed half the accumulator's range: then the entry becomes Inf and :meth:`result` refuses it, as it
    refuses any mean that is not finite in its dtype.
    """

    def __init__(self):
        self.means: dict[str, torch.Tensor] = {}
        self.totals: dict[str, float] = {}
        self.dtypes: dict[str, np.dtype] = {}

    def __len__(self) -> int:
        return len(self.means)

    def add(self, arrays: Mapping[str, Any], weight: float) -> None:
        """Fold ``arrays`` (numpy or torch, as sent) into the mean with ``weight`` (> 0)."""
        weight = float(weight)
        for name, value in arrays.items():
            if name not in self.dtypes:
                self.dtypes[name] = value_dtype(value)
            tensor = as_tensor(value)
            wide = torch.float64 if tensor.dtype == torch.float64 or not tensor.is_floating_point() else torch.float32
            total = self.totals.get(name, 0.0) + weight
            mean = self.means.get(name)
            if mean is None:
                self.means[name] = tensor.to(wide, copy=True)
            else:
                if mean.dtype != wide and wide == torch.float64:
                    mean = self.means[name] = mean.to(torch.float64)
                mean.lerp_(tensor.to(mean.dtype), weight / total)
            self.totals[name] = total

    def result(self) -> dict[str, np.ndarray]:
        """Each entry's mean in the dtype of its first contribution (an integer one rounded).

        Raises:
            NonFiniteModelError: a mean is not finite in its dtype (named).
        """
        means = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for name, mean in self.means.items():
                means[name] = _cast(mean.numpy(), self.dtypes[name])
        check_finite(means, "the weighted mean")
        return means


def checksum(weights: Mapping[str, Any]) -> float:
    """A fingerprint of a model's weights (sum of absolute values, float64, in name order): the same number on
    the server and a site for the same arrays."""
    return float(sum(float(np.abs(np.asarray(weights[k], dtype=np.float64)).sum()) for k in sorted(weights)))
