"""FedProx's proximal term, added to the user's loss through the gradients (torch; user code unchanged).

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020: a site minimises
``loss(w) + mu/2·||w − w_global||²``. The term's gradient is ``mu·(w − w_global)``; a hook on every trainable
parameter adds it to the gradient of the user's loss, so ``optimizer.step()`` follows the FedProx objective.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def proximal_term(model: torch.nn.Module, mu: float) -> Iterator[None]:
    """While active, gradients of ``model``'s parameters include ``mu·(w − w_at_entry)``."""
    if not mu:
        yield
        return
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    handles = []
    for param in model.parameters():
        anchor = param.detach().clone()
        handles.append(param.register_hook(lambda grad, p=param, a=anchor: grad + mu * (p.detach() - a)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
