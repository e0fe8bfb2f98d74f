"""FedOpt: a server-side optimizer that treats the aggregated update as a (negative) gradient.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021. With Δ the sites' averaged weight difference, the
pseudo-gradient is g = −Δ and the global weights take one optimizer step. The steps follow PyTorch's own
definitions (torch.optim.SGD with momentum, torch.optim.Adam with bias correction), so a user can reason about
them the same way; a test checks them against torch.optim. Plain numpy: no NVFlare, no torch model needed.

- ``sgd``:  b ← μ·b + g (b = g on the first step); w ← w − lr·b. With lr = 1 and μ = 0 this is FedAvg.
- ``adam``: m ← β1·m + (1−β1)·g; v ← β2·v + (1−β2)·g²; w ← w − lr·m̂/(√v̂ + ε) with m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flip.checks import check_choice, check_fraction, check_positive
from flip.constants import FEDOPT_OPTIMIZERS, FedOptimizer


@dataclass
class FedOptState:
    """The optimizer's memory between rounds (momentum buffers or Adam moments) and its step count."""

    step: int = 0
    first: dict[str, np.ndarray] = field(default_factory=dict)
    second: dict[str, np.ndarray] = field(default_factory=dict)


def check_fedopt_args(optimizer: str, lr: float, momentum: float, beta1: float, beta2: float, eps: float) -> None:
    """Raise ValueError naming the first bad argument."""
    check_choice("optimizer", optimizer, FEDOPT_OPTIMIZERS)
    check_positive("lr", lr)
    for name, value in (("momentum", momentum), ("beta1", beta1), ("beta2", beta2)):
        check_fraction(name, value)
    check_positive("eps", eps)


def fedopt_step(
    weights: Mapping[str, Any],
    update: Mapping[str, Any],
    state: FedOptState,
    optimizer: str = FedOptimizer.SGD,
    lr: float = 1.0,
    momentum: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.99,
    eps: float = 1e-8,
) -> dict[str, np.ndarray]:
    """Return the new global weights after one server optimizer step on the aggregated ``update`` (Δ).

    Floating-point entries present in ``update`` take the optimizer step; other entries of the update (integer
    buffers) are added as in FedAvg; entries not in the update are kept. ``state`` is updated in place.

    Raises:
        ValueError: a bad argument, or an update entry whose shape differs from the weights'.
    """
    check_fedopt_args(optimizer, lr, momentum, beta1, beta2, eps)
    state.step += 1
    new = {k: np.asarray(v) for k, v in weights.items()}
    for name, delta in update.items():
        delta = np.asarray(delta)
        if name not in new:
            raise ValueError(f"update entry {name!r} is not in the global model")
        w = new[name]
        if w.shape != delta.shape:
            raise ValueError(f"update entry {name!r} has shape {delta.shape}, the global model {w.shape}")
        if w.dtype.kind != "f":
            new[name] = w + delta.astype(w.dtype)
            continue
        g = -delta.astype(np.float64)
        if optimizer == FedOptimizer.SGD:
            direction = g
            if momentum:
                buffer = state.first.get(name)
                buffer = g.copy() if buffer is None else momentum * buffer + g
                state.first[name] = buffer
                direction = buffer
            step = lr * direction
        else:
            m = beta1 * state.first.get(name, np.zeros_like(g)) + (1 - beta1) * g
            v = beta2 * state.second.get(name, np.zeros_like(g)) + (1 - beta2) * g * g
            state.first[name], state.second[name] = m, v
            m_hat = m / (1 - beta1**state.step)
            v_hat = v / (1 - beta2**state.step)
            step = lr * m_hat / (np.sqrt(v_hat) + eps)
        new[name] = (w.astype(np.float64) - step).astype(w.dtype)
    return new
