"""The "largest percentile to share" policy (Shokri & Shmatikov, Privacy-preserving deep learning, CCS '15).

Given a model update ΔW (a mapping of names to arrays), compute the ``percentile`` of abs(ΔW) over the whole
update, share only entries whose absolute value is *greater* than it (the others become 0) and clip the shared
entries to [-gamma, gamma].

Exactness: the threshold is ``numpy.percentile(abs(all values), percentile)`` with numpy's default ("linear")
definition, computed in the update's dtype exactly as numpy does, but found by selection (two order statistics)
instead of a full sort. bfloat16 updates are thresholded as numpy would on their float32 values.

Cost: the update is never concatenated. A small random sample brackets the two order statistics; one chunked
pass counts the values below the bracket and keeps the few inside it; a second chunked pass zeroes and clips in
place. Peak extra memory is a few chunk-sized buffers plus the bracket's candidates (well under half the update).

Per-step scaling: like NVFlare's built-in filter, when ``num_steps`` (DXO meta ``NUM_STEPS_CURRENT_ROUND``) is
given the update is divided by it before thresholding and clipping and multiplied back after, so ``gamma`` bounds
the per-step change.

Works on numpy arrays and torch tensors (any floating dtype, each kept); no NVFlare import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from flip.errors import PrivacyError

#: elements per chunk of the streaming passes (4 MiB of float32)
CHUNK = 1 << 20
#: updates up to this many values are thresholded by one exact selection on all of them
SMALL_UPDATE = 1 << 18
#: values sampled to bracket the order statistics
SAMPLE_SIZE = 1 << 16

_NP_DTYPE = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64, torch.bfloat16: np.float32}


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


def check_percentile(percentile: Any) -> float:
    """Return ``percentile`` as float if it is a number in [0, 100], else raise ValueError naming it."""
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float, np.integer, np.floating)):
        raise ValueError(f"percentile must be a number in [0, 100], got {percentile!r}")
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile!r}")
    return float(percentile)


def check_gamma(gamma: Any) -> float:
    """Return ``gamma`` as float if it is a finite number > 0, else raise ValueError naming it."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.integer, np.floating)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    if not (gamma > 0 and math.isfinite(gamma)):
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    return float(gamma)


def check_num_steps(num_steps: Any) -> float:
    """Return ``num_steps`` as float if it is a finite number > 0, else raise PrivacyError naming it."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, float, np.integer, np.floating)):
        raise PrivacyError(f"num_steps must be a finite number > 0, got {num_steps!r}")
    if not (num_steps > 0 and math.isfinite(num_steps)):
        raise PrivacyError(f"num_steps must be a finite number > 0, got {num_steps!r}")
    return float(num_steps)


# ----------------------------------------------------------------------------------------------------------------
# tensors in, tensors out


def _to_tensor(key: str, value: Any, inplace: bool) -> torch.Tensor:
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
        return tensor.clone(memory_format=torch.contiguous_format)
    return tensor.contiguous()


def _flat_chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = tensor.view(-1)
    for start in range(0, flat.numel(), CHUNK):
        yield flat[start : start + CHUNK]


def _round_down(value: float, dtype: torch.dtype) -> float:
    """Largest value representable in ``dtype`` that is <= ``value`` (value >= 0)."""
    if math.isinf(value):
        return value
    if dtype == torch.float64:
        return value
    if dtype == torch.bfloat16:
        f32 = np.float32(value)
        if float(f32) > value:
            f32 = np.nextafter(f32, np.float32(-np.inf))
        bits = np.array([f32], dtype=np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
        return float(bits.view(np.float32)[0])
    np_dtype = _NP_DTYPE[dtype]
    cast = np_dtype(value)
    if not np.isfinite(cast) or float(cast) > value:
        cast = np.nextafter(np_dtype(min(value, float(np.finfo(np_dtype).max))), np_dtype(-np.inf))
        if float(np.nextafter(cast, np_dtype(np.inf))) <= value:
            cast = np.nextafter(cast, np_dtype(np.inf))
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


def _check_finite(key: str, chunk_abs: torch.Tensor) -> None:
    if chunk_abs.numel() and not math.isfinite(float(chunk_abs.max())):
        raise PrivacyError(
            f"update entry {key!r} contains NaN or Inf: a non-finite update is never shared or aggregated"
        )


def _order_statistics(tensors: Mapping[str, torch.Tensor], n: int, k_lo: int, k_hi: int) -> tuple[float, float]:
    """Return the k_lo-th and k_hi-th smallest of abs(values) (0-based), checking finiteness on the way."""
    if n <= SMALL_UPDATE:
        parts = []
        for key, tensor in tensors.items():
            part = tensor.reshape(-1).abs().to(torch.float64)
            _check_finite(key, part)
            parts.append(part.numpy())
        values = np.concatenate(parts)
        values.partition([k_lo, k_hi])
        return float(values[k_lo]), float(values[k_hi])

    # 1. a random sample brackets the two ranks (the seed only affects speed, never the result)
    generator = torch.Generator().manual_seed(0x5EED)
    sample_parts = []
    for tensor in tensors.values():
        size = tensor.numel()
        if size == 0:
            continue
        take = max(1, round(SAMPLE_SIZE * size / n))
        index = torch.randint(0, size, (take,), generator=generator)
        sample_parts.append(tensor.reshape(-1)[index].abs().to(torch.float64))
    sample = torch.sort(torch.cat(sample_parts)).values
    sample = sample[torch.isfinite(sample)]
    m = sample.numel()
    f_lo, f_hi = k_lo / (n - 1), k_hi / (n - 1)
    slack = 6.0 * math.sqrt(max(f_lo * (1 - f_lo), 1.0 / m) / m) + 2.0 / m
    lo = float(sample[int(math.floor((f_lo - slack) * (m - 1)))]) if m and f_lo - slack > 0 else 0.0
    hi = float(sample[int(math.ceil((f_hi + slack) * (m - 1)))]) if m and f_hi + slack < 1 else math.inf

    # 2. one pass: count below the bracket, keep what is inside it
    below = 0
    equal = 0
    inside: list[torch.Tensor] = []
    kept = 0
    budget = n // 4
    for key, tensor in tensors.items():
        for chunk in _flat_chunks(tensor):
            a = chunk.abs()
            _check_finite(key, a)
            below += int(torch.count_nonzero(a < lo))
            if lo == hi:
                equal += int(torch.count_nonzero(a == lo))
            elif kept <= budget:
                sel = a[(a >= lo) & (a <= hi)]
                kept += sel.numel()
                inside.append(sel)
    if lo == hi:
        if below <= k_lo and k_hi < below + equal:
            return lo, lo
    elif kept <= budget and below <= k_lo and k_hi < below + kept:
        values = torch.cat(inside).to(torch.float64).numpy()
        values.partition([k_lo - below, k_hi - below])
        return float(values[k_lo - below]), float(values[k_hi - below])

    # 3. the bracket missed (very unlikely) or held too much: exact selection on everything
    values = np.concatenate([t.reshape(-1).abs().to(torch.float64).numpy() for t in tensors.values()])
    values.partition([k_lo, k_hi])
    return float(values[k_lo]), float(values[k_hi])


def _threshold(tensors: Mapping[str, torch.Tensor], percentile: float) -> tuple[float, int]:
    n = sum(t.numel() for t in tensors.values())
    if n == 0:
        return 0.0, 0
    dtype = torch.float16
    for tensor in tensors.values():
        dtype = torch.promote_types(dtype, tensor.dtype)
    k_lo, k_hi = _ranks(n, percentile)
    v_lo, v_hi = _order_statistics(tensors, n, k_lo, k_hi)
    return _numpy_linear(v_lo, v_hi, n, percentile, _NP_DTYPE[dtype]), n


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
    tensors = {k: _to_tensor(k, v, inplace=True) for k, v in update.items()}
    return _threshold(tensors, percentile)[0]


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
    tensors = {k: _to_tensor(k, v, inplace) for k, v in update.items()}
    if num_steps != 1:
        for tensor in tensors.values():
            tensor.div_(num_steps)

    threshold, total = _threshold(tensors, percentile)
    zeroed = 0
    clipped = 0
    for tensor in tensors.values():
        t_cmp = _round_down(threshold, tensor.dtype)
        g_cmp = _round_down(gamma, tensor.dtype)
        clip_above = max(t_cmp, g_cmp)
        for chunk in _flat_chunks(tensor):
            a = chunk.abs()
            drop = a <= t_cmp
            zeroed += int(torch.count_nonzero(drop))
            clipped += int(torch.count_nonzero(a > clip_above))
            chunk.masked_fill_(drop, 0)
            chunk.clamp_(-g_cmp, g_cmp)
        if num_steps != 1:
            tensor.mul_(num_steps)

    result: dict[str, Any] = {}
    for key, original in update.items():
        tensor = tensors[key]
        result[key] = tensor.numpy() if isinstance(original, np.ndarray) else tensor
    return result, FilterStats(threshold=threshold, total=total, shared=total - zeroed, clipped=clipped)
