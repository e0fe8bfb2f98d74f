"""The "largest percentile to share" policy (Shokri & Shmatikov, Privacy-preserving deep learning, CCS '15).

Given a model update ΔW (a mapping of names to arrays), compute the ``percentile`` of abs(ΔW) over the whole
update, share only entries whose absolute value is *greater* than it (the others become 0) and clip the shared
entries to [-gamma, gamma].

Exactness: the threshold is ``numpy.percentile(abs(all values), percentile)`` with numpy's default ("linear")
definition, computed in the update's dtype exactly as numpy does, but found by selection (two order statistics)
instead of a full sort. bfloat16 updates are thresholded as numpy would on their float32 values.

Cost: the update is never concatenated or sorted. A small random sample brackets the two order statistics; one
chunked pass counts the values below the bracket and keeps the few inside it, from which the two are selected
exactly; a second chunked pass zeroes and clips in place, branch-free. Both passes use numpy ufuncs on reused
chunk-sized buffers (torch tensors are filtered through zero-copy numpy views; bfloat16 chunk by chunk through
float32). Peak extra memory is those buffers plus the bracket's candidates: a few percent of the update.

Per-step scaling: like NVFlare's built-in filter, when ``num_steps`` (DXO meta ``NUM_STEPS_CURRENT_ROUND``) is
given the update is divided by it before thresholding and clipping and multiplied back after, so ``gamma`` bounds
the per-step change.

Works on numpy arrays and torch tensors (any floating dtype, each kept); no NVFlare import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from flip.checks import check_gamma, check_percentile, check_positive
from flip.errors import PrivacyError

#: elements per chunk of the streaming passes (1 MiB of float32: the buffers stay in cache)
CHUNK = 1 << 18
#: updates up to this many values are thresholded by one exact selection on all of them
SMALL_UPDATE = 1 << 18
#: values sampled to bracket the order statistics
SAMPLE_SIZE = 1 << 16

_NP_DTYPE = {
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bfloat16: np.float32,
}


@dataclass(frozen=True)
class FilterStats:
    """What one application of the policy did (counts only: never values)."""

    threshold: float
    total: int
    shared: int
    clipped: int

    @property
    def fraction_shared(self) -> float:
        return self.shared / self.total if self.total else 0.0

    @property
    def fraction_clipped(self) -> float:
        return self.clipped / self.total if self.total else 0.0


def check_num_steps(num_steps: Any) -> float:
    """Return ``num_steps`` as float if it is a finite number > 0, else raise PrivacyError naming it (the update
    must not be shared)."""
    try:
        return check_positive("num_steps", num_steps)
    except ValueError as exc:
        raise PrivacyError(str(exc)) from None


# ----------------------------------------------------------------------------------------------------------------
# the update as flat numpy views


class _Entry:
    """One entry of the update: its flat numpy view (or, for bfloat16, its flat tensor) and its dtype."""

    def __init__(self, key: str, tensor: torch.Tensor):
        self.key = key
        self.tensor = tensor
        self.dtype = tensor.dtype
        self.numel = tensor.numel()
        self.bf16 = tensor.dtype == torch.bfloat16
        self.flat = tensor.view(-1) if self.bf16 else tensor.view(-1).numpy()

    def chunks(self, size: int) -> Iterator[tuple[np.ndarray, Callable[[np.ndarray], None] | None]]:
        """Yield (values, write_back): numpy chunks to read or change in place (bfloat16: a float32 copy
        and the function that writes it back)."""
        for start in range(0, self.numel, size):
            chunk = self.flat[start : start + size]
            if self.bf16:
                yield chunk.float().numpy(), lambda values, c=chunk: c.copy_(torch.from_numpy(values))
            else:
                yield chunk, None


def _to_entry(key: str, value: Any, inplace: bool) -> _Entry:
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.device.type != "cpu":
            raise PrivacyError(f"update entry {key!r} is on {tensor.device}: move the update to the CPU first")
    elif isinstance(value, np.ndarray):
        if value.dtype.kind != "f":
            raise PrivacyError(
                f"update entry {key!r} has dtype {value.dtype}: only floating-point weight diffs can be filtered"
            )
        if not value.dtype.isnative:
            value = value.astype(value.dtype.newbyteorder("="))
        if inplace and not value.flags.writeable:
            raise PrivacyError(f"update entry {key!r} is a read-only array and cannot be filtered in place")
        tensor = torch.from_numpy(value)
    else:
        raise PrivacyError(
            f"update entry {key!r} is a {type(value).__name__}: expected a numpy array or a torch tensor"
        )
    if not torch.is_floating_point(tensor):
        raise PrivacyError(
            f"update entry {key!r} has dtype {tensor.dtype}: only floating-point weight diffs can be filtered"
        )
    if not inplace:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return _Entry(key, tensor.contiguous())


class _Buffers:
    """Chunk-sized scratch buffers, reused for every chunk (no allocation and no page faults per chunk)."""

    def __init__(self, entries: list[_Entry]):
        self.size = max(1, min(CHUNK, max((e.numel for e in entries), default=1)))
        self._abs: dict[np.dtype, np.ndarray] = {}
        self.mask = np.empty(self.size, dtype=bool)
        self.mask2 = np.empty(self.size, dtype=bool)

    def abs(self, values: np.ndarray) -> np.ndarray:
        buffer = self._abs.get(values.dtype)
        if buffer is None:
            buffer = self._abs[values.dtype] = np.empty(self.size, dtype=values.dtype)
        out = buffer[: values.size]
        np.abs(values, out=out)
        return out


def _round_down(value: float, dtype: torch.dtype) -> float:
    """Largest value representable in ``dtype`` that is <= ``value`` (value >= 0)."""
    if math.isinf(value) or dtype == torch.float64:
        return value
    if dtype == torch.bfloat16:
        f32 = np.float32(value)
        if float(f32) > value:
            f32 = np.nextafter(f32, np.float32(-np.inf))
        bits = np.array([f32], dtype=np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return float(bits.view(np.float32)[0])
    np_dtype = _NP_DTYPE[dtype]
    cast = np_dtype(min(value, float(np.finfo(np_dtype).max)))
    if float(cast) > value:
        cast = np.nextafter(cast, np_dtype(-np.inf))
    return float(cast)


def _numpy_linear(v_lo: float, v_hi: float, n: int, percentile: float, np_dtype) -> float:
    """numpy.percentile's default interpolation between two order statistics, in numpy's own arithmetic."""
    quantile = np.true_divide(percentile, 100)
    virtual = (n - 1) * quantile
    previous = np.floor(virtual)
    gamma = float(np.asanyarray(virtual - previous, dtype=np.float64))
    a = np.asarray(v_lo, dtype=np_dtype)
    b = np.asarray(v_hi, dtype=np_dtype)
    diff_b_a = b - a
    if gamma >= 0.5:
        return float(b - diff_b_a * (1 - gamma))
    return float(a + diff_b_a * gamma)


def _ranks(n: int, percentile: float) -> tuple[int, int]:
    """The two 0-based ranks numpy.percentile interpolates between (numpy's own index arithmetic)."""
    quantile = np.true_divide(percentile, 100)
    virtual = (n - 1) * quantile
    if virtual >= n - 1:
        return n - 1, n - 1
    if virtual < 0:
        return 0, 0
    lo = int(np.floor(virtual))
    return lo, min(lo + 1, n - 1)


def _check_finite(key: str, chunk_abs: np.ndarray) -> None:
    # max() propagates NaN and is inf for an Inf: one cheap reduction instead of an isfinite pass
    if chunk_abs.size and not math.isfinite(float(chunk_abs.max())):
        raise PrivacyError(
            f"update entry {key!r} contains NaN or Inf: a non-finite update is never shared or aggregated"
        )


def _all_abs(entries: list[_Entry]) -> np.ndarray:
    parts = []
    for entry in entries:
        for values, _ in entry.chunks(CHUNK):
            part = np.abs(values).astype(np.float64)
            _check_finite(entry.key, part)
            parts.append(part)
    return np.concatenate(parts) if parts else np.zeros(0)


def _select(values: np.ndarray, k_lo: int, k_hi: int) -> tuple[float, float]:
    values.partition([k_lo, k_hi])
    return float(values[k_lo]), float(values[k_hi])


def _order_statistics(entries: list[_Entry], n: int, k_lo: int, k_hi: int, buffers: _Buffers) -> tuple[float, float]:
    """Return the k_lo-th and k_hi-th smallest of abs(values) (0-based), checking finiteness on the way."""
    if n <= SMALL_UPDATE:
        return _select(_all_abs(entries), k_lo, k_hi)

    # 1. a random sample brackets the two ranks (the seed only affects speed, never the result)
    rng = np.random.default_rng(0x5EED)
    parts = []
    for entry in entries:
        if entry.numel:
            index = rng.integers(0, entry.numel, max(1, round(SAMPLE_SIZE * entry.numel / n)))
            picked = entry.flat[torch.from_numpy(index)].float().numpy() if entry.bf16 else entry.flat[index]
            parts.append(np.abs(picked).astype(np.float64))
    sample = np.sort(np.concatenate(parts))
    sample = sample[np.isfinite(sample)]
    m = sample.size
    f_lo, f_hi = k_lo / (n - 1), k_hi / (n - 1)
    slack = 6.0 * math.sqrt(max(f_lo * (1 - f_lo), 1.0 / max(m, 1)) / max(m, 1)) + 2.0 / max(m, 1)
    lo = float(sample[int(math.floor((f_lo - slack) * (m - 1)))]) if m and f_lo - slack > 0 else 0.0
    hi = float(sample[int(math.ceil((f_hi + slack) * (m - 1)))]) if m and f_hi + slack < 1 else math.inf

    # 2. one pass: count below the bracket, keep what is inside it
    below = equal = kept = 0
    inside: list[np.ndarray] = []
    budget = n // 4
    for entry in entries:
        lo_t, hi_t = (_NP_DTYPE[entry.dtype](v) if math.isfinite(v) else v for v in (lo, hi))
        for values, _ in entry.chunks(buffers.size):
            a = buffers.abs(values)
            _check_finite(entry.key, a)
            m1, m2 = buffers.mask[: a.size], buffers.mask2[: a.size]
            np.less(a, lo_t, out=m1)
            below += int(np.count_nonzero(m1))
            if lo == hi:
                np.equal(a, lo_t, out=m1)
                equal += int(np.count_nonzero(m1))
            elif kept <= budget:
                np.greater_equal(a, lo_t, out=m1)
                np.less_equal(a, hi_t, out=m2)
                np.logical_and(m1, m2, out=m1)
                selected = a[m1].astype(np.float64)
                kept += selected.size
                inside.append(selected)
    if lo == hi:
        if below <= k_lo and k_hi < below + equal:
            return lo, lo
    elif kept <= budget and below <= k_lo and k_hi < below + kept:
        return _select(np.concatenate(inside), k_lo - below, k_hi - below)

    # 3. the bracket missed (very unlikely) or held too much: exact selection on everything
    return _select(_all_abs(entries), k_lo, k_hi)


def _threshold(entries: list[_Entry], percentile: float, buffers: _Buffers) -> tuple[float, int]:
    n = sum(e.numel for e in entries)
    if n == 0:
        return 0.0, 0
    dtype = torch.float16
    for entry in entries:
        dtype = torch.promote_types(dtype, entry.dtype)
    k_lo, k_hi = _ranks(n, percentile)
    v_lo, v_hi = _order_statistics(entries, n, k_lo, k_hi, buffers)
    return _numpy_linear(v_lo, v_hi, n, percentile, _NP_DTYPE[dtype]), n


def _scale(entries: list[_Entry], factor: float, divide: bool) -> None:
    for entry in entries:
        if entry.bf16:
            entry.flat.div_(factor) if divide else entry.flat.mul_(factor)
        else:
            (np.divide if divide else np.multiply)(entry.flat, factor, out=entry.flat)


def percentile_threshold(update: Mapping[str, Any], percentile: float) -> float:
    """Return ``numpy.percentile(abs(all values of update), percentile)``, found by selection.

    Args:
        update: names to numpy arrays or torch tensors (floating point).
        percentile: in [0, 100].

    Raises:
        ValueError: percentile out of range.
        PrivacyError: a non-floating or non-finite entry.
    """
    percentile = check_percentile(percentile)
    entries = [_to_entry(k, v, inplace=True) for k, v in update.items()]
    return _threshold(entries, percentile, _Buffers(entries))[0]


def percentile_filter(
    update: Mapping[str, Any],
    percentile: float = 10,
    gamma: float = 0.01,
    *,
    num_steps: float = 1,
    inplace: bool = False,
) -> tuple[dict[str, Any], FilterStats]:
    """Apply the "largest percentile to share" policy to a model update.

    Args:
        update: names to numpy arrays or torch tensors of ΔW (floating point, finite, on the CPU).
        percentile: in [0, 100]; entries whose abs value is not greater than this percentile of abs(ΔW)
            become 0. Default 10.
        gamma: > 0; shared entries are clipped to [-gamma, gamma]. Default 0.01.
        num_steps: > 0; the update is divided by it before thresholding and clipping and multiplied back
            after (NVFlare's ``NUM_STEPS_CURRENT_ROUND``), so gamma bounds the per-step change. Default 1.
        inplace: modify the given arrays (the caller owns them) instead of copies.

    Returns:
        The filtered update (same keys, shapes, dtypes and array types) and the counts of what was shared.

    Raises:
        ValueError: percentile or gamma out of range.
        PrivacyError: an entry is not a floating array/tensor, or holds NaN/Inf; num_steps invalid.
    """
    percentile = check_percentile(percentile)
    gamma = check_gamma(gamma)
    num_steps = check_num_steps(num_steps)
    entries = [_to_entry(k, v, inplace) for k, v in update.items()]
    if num_steps != 1:
        _scale(entries, num_steps, divide=True)

    buffers = _Buffers(entries)
    threshold, total = _threshold(entries, percentile, buffers)
    shared = clipped = 0
    for entry in entries:
        np_dtype = _NP_DTYPE[entry.dtype]  # bfloat16 is compared as float32
        t_cmp = np_dtype(_round_down(threshold, entry.dtype))
        g_cmp = np_dtype(_round_down(gamma, entry.dtype))
        clip_above = max(t_cmp, g_cmp)
        for values, write_back in entry.chunks(buffers.size):
            a = buffers.abs(values)
            keep, over = buffers.mask[: a.size], buffers.mask2[: a.size]
            np.greater(a, t_cmp, out=keep)
            shared += int(np.count_nonzero(keep))
            np.greater(a, clip_above, out=over)
            clipped += int(np.count_nonzero(over))
            np.clip(values, -g_cmp, g_cmp, out=values)
            np.multiply(values, keep, out=values)  # branch-free zeroing of what is not shared...
            np.add(values, 0, out=values)  # ...as +0.0 (x * 0 is -0.0 for negative x)
            if write_back is not None:
                write_back(values)
    if num_steps != 1:
        _scale(entries, num_steps, divide=False)

    result: dict[str, Any] = {}
    for (key, original), entry in zip(update.items(), entries):
        result[key] = entry.tensor.numpy() if isinstance(original, np.ndarray) else entry.tensor
    return result, FilterStats(threshold=threshold, total=total, shared=shared, clipped=clipped)
