"""Client-level (ε, δ) differential privacy for a site's updates: clip + Gaussian noise, and its accounting.

Each round a site releases its whole update clipped to L2 norm ``clip_norm`` plus N(0, (z·clip_norm)²) noise on
every entry: a Gaussian mechanism with sensitivity ``clip_norm`` on the site's contribution (McMahan et al.,
"Learning Differentially Private Recurrent Language Models", ICLR 2018). Every site takes part in every round (no
subsampling), so after k rounds the site's whole contribution is the k-fold composition of that mechanism.

Accounting uses Google's ``dp-accounting`` library, its RDP accountant (Mironov, "Rényi Differential Privacy", CSF
2017): maintained, without heavy dependencies, a few milliseconds per evaluation, and an upper bound on ε (a
budget check that errs on the safe side). Its PLD accountant is tighter but takes seconds per evaluation.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flip.errors import PrivacyError


@dataclass(frozen=True)
class NoiseStats:
    norm: float  # L2 norm of the update before clipping
    scale: float  # factor applied by clipping (1: not clipped)
    noise_std: float  # per-entry standard deviation of the noise added


def make_rng(seed: int | None = None) -> np.random.Generator:
    """A generator seeded from the OS's cryptographic randomness (``seed`` only for tests)."""
    return np.random.default_rng(seed if seed is not None else secrets.randbits(128))


CHUNK = 1 << 20


def _flat_chunks(array: np.ndarray):
    flat = array.reshape(-1)
    for start in range(0, flat.size, CHUNK):
        yield flat[start : start + CHUNK]


def clip_and_noise(
    update: Mapping[str, Any], clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], NoiseStats]:
    """Clip the whole update to L2 norm ``clip_norm``, then add N(0, (noise_multiplier·clip_norm)²) per entry.

    Works in place, chunk by chunk, on float numpy arrays (dtypes kept; the norm is summed in float64; float16
    and float32 entries get float32 noise, float64 entries float64 noise).

    Raises:
        PrivacyError: a non-floating or non-finite entry.
    """
    arrays = {}
    total = 0.0
    for key, value in update.items():
        array = np.asarray(value)
        if array.dtype.kind != "f":
            raise PrivacyError(f"update entry {key!r} has dtype {array.dtype}: only floating-point weight diffs")
        if not array.flags.writeable or not array.flags.c_contiguous:
            array = np.array(array, order="C")  # one writable C-ordered copy, shape kept (0-d too)
        square = sum(float(np.dot(c64, c64)) for c64 in (c.astype(np.float64) for c in _flat_chunks(array)))
        if not math.isfinite(square):
            raise PrivacyError(f"update entry {key!r} contains NaN or Inf: a non-finite update is never shared")
        total += square
        arrays[key] = array
    norm = math.sqrt(total)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    std = noise_multiplier * clip_norm
    for array in arrays.values():
        noise_dtype = np.float64 if array.dtype == np.float64 else np.float32
        for chunk in _flat_chunks(array):
            noise = rng.standard_normal(chunk.size, dtype=noise_dtype)
            noise *= std
            if scale != 1.0:
                chunk *= chunk.dtype.type(scale)
            chunk += noise.astype(chunk.dtype, copy=False)
    return arrays, NoiseStats(norm=norm, scale=scale, noise_std=std)


def epsilon_after(rounds: int, noise_multiplier: float, delta: float) -> float:
    """ε spent after ``rounds`` releases of the Gaussian mechanism with ``noise_multiplier``, at ``delta``."""
    import dp_accounting
    from dp_accounting import rdp

    if rounds <= 0:
        return 0.0
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds))
    return float(accountant.get_epsilon(delta))


#: the noise multipliers calibrate_noise searches (its bracket): the ε it can reach lie between theirs
NOISE_SEARCH_RANGE = (1e-3, 1e4)


def check_noise_multiplier(noise_multiplier: float, delta: float) -> float:
    """Return ε for one release at ``noise_multiplier`` if it is finite, else raise ValueError naming the
    argument: a noise so small (e.g. 1e-300) that ε is infinite gives no guarantee, and would reach metrics.json
    and the hub as Infinity; one so large that the accountant overflows is refused too.
    """
    try:
        epsilon = epsilon_after(1, noise_multiplier, delta)
    except (ArithmeticError, ValueError) as exc:
        raise ValueError(
            f"noise_multiplier {noise_multiplier!r} cannot be accounted at delta={delta!r} "
            f"({type(exc).__name__}): use a noise multiplier between {NOISE_SEARCH_RANGE[0]:g} and "
            f"{NOISE_SEARCH_RANGE[1]:g}"
        ) from exc
    if not math.isfinite(epsilon):
        raise ValueError(
            f"noise_multiplier {noise_multiplier!r} gives ε={epsilon} for one round at delta={delta!r}: "
            f"no privacy guarantee; use a larger noise multiplier (e.g. >= {NOISE_SEARCH_RANGE[0]:g})"
        )
    return epsilon


def calibrate_noise(epsilon: float, delta: float, rounds: int) -> float:
    """The noise multiplier at which ``rounds`` releases spend ``epsilon`` at ``delta``.

    Raises:
        ValueError: no noise multiplier in NOISE_SEARCH_RANGE spends exactly ``epsilon`` over ``rounds`` at
            ``delta``; the message names the three and the range of ε that can be reached.
    """
    import dp_accounting
    from dp_accounting import rdp

    low, high = NOISE_SEARCH_RANGE
    try:
        return float(
            dp_accounting.calibrate_dp_mechanism(
                rdp.RdpAccountant,
                lambda z: dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds),
                epsilon,
                delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
            )
        )
    except (ArithmeticError, ValueError, RuntimeError) as exc:
        smallest, largest = epsilon_after(rounds, high, delta), epsilon_after(rounds, low, delta)
        raise ValueError(
            f"epsilon={epsilon!r} over rounds={rounds!r} at delta={delta!r} cannot be reached: with noise "
            f"multipliers in [{low:g}, {high:g}] the achievable epsilon is between {smallest:.3g} and {largest:.3g} "
            "(choose epsilon in that range, or change rounds or delta)"
        ) from exc
