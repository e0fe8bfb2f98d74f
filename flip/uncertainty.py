"""Predicting with uncertainty from what a run stored: an ensemble, MC dropout, or SWAG.

All return ``(mean, std)`` of the class probabilities over the members/samples; ``predictive_entropy`` of the mean
is the usual summary of how unsure the prediction is (0: certain; log(classes): uniform).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def _stack_probs(outputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.stack([torch.softmax(o, dim=-1) for o in outputs])
    return probs.mean(0), probs.std(0, unbiased=False)


def predictive_entropy(mean_probs: torch.Tensor) -> torch.Tensor:
    """The entropy (in nats) of each row of class probabilities: ``-Σ p·log p`` (0·log 0 taken as 0)."""
    p = mean_probs.clamp_min(0)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


@torch.no_grad()
def ensemble_predict(
    build_model: Callable[[], torch.nn.Module], members: Mapping[str, Mapping[str, Any]], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict with every member of an ensemble (e.g. ``ensemble.pt``'s sites' last local models)."""
    if not members:
        raise ValueError("the ensemble has no members")
    outputs = []
    for state in members.values():
        model = build_model()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=False)
        model.eval()
        outputs.append(model(x))
    return _stack_probs(outputs)


@torch.no_grad()
def dropout_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's dropout modules (any kind: Dropout, Dropout2d, AlphaDropout, ...)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]


def mc_dropout_predict(
    model: torch.nn.Module, x: torch.Tensor, samples: int = 20, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo dropout: dropout stays on at inference; ``samples`` stochastic forward passes."""
    dropouts = dropout_layers(model)
    if not dropouts:
        raise ValueError("MC dropout needs a model with dropout layers")
    if samples < 2:
        raise ValueError(f"samples must be >= 2, got {samples}")
    model.eval()
    for module in dropouts:
        module.train()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        outputs = [model(x) for _ in range(samples)]
    finally:
        torch.random.set_rng_state(generator_state)
        for module in dropouts:
            module.eval()
    return _stack_probs(outputs)


def swag_sample(
    swag: Mapping[str, Any], count: int, seed: int = 0, scale: float = 1.0
) -> list[dict[str, torch.Tensor]]:
    """Draw ``count`` weight sets from the diagonal SWAG Gaussian N(mean, scale·variance)."""
    generator = torch.Generator().manual_seed(seed)
    mean = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in swag["mean"].items()}
    std = {
        k: torch.as_tensor(v, dtype=torch.float64).clamp_min(0).sqrt() * scale**0.5 for k, v in swag["variance"].items()
    }
    return [
        {
            k: (mean[k] + std[k] * torch.randn(mean[k].shape, generator=generator, dtype=torch.float64)).to(
                torch.as_tensor(swag["mean"][k]).dtype
            )
            for k in mean
        }
        for _ in range(count)
    ]


@torch.no_grad()
def swag_predict(
    build_model: Callable[[], torch.nn.Module],
    swag: Mapping[str, Any],
    x: torch.Tensor,
    samples: int = 20,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict with ``samples`` models drawn from the SWAG posterior (``swag.pt``)."""
    return ensemble_predict(build_model, {str(i): s for i, s in enumerate(swag_sample(swag, samples, seed))}, x)
