"""FedProx's proximal term, added to the user's loss through the gradients (torch; user code unchanged).

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020: a site minimises
``loss(w) + mu/2·||w − w_global||²``. The term's gradient is ``mu·(w − w_global)``; a hook on every trainable
parameter adds it to the gradient of the user's loss, so ``optimizer.step()`` follows the FedProx objective.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def proximal_term(model: torch.nn.Module, mu: float, dp_session: Any = None) -> Iterator[None]:
    """While active, gradients of ``model``'s parameters include ``mu·(w − w_at_entry)``.

    Under record-level DP-SGD (``dp_session``, a flip.privacy.dp_sgd.DPSession) the term is added to each step's
    private gradient after the noise (Opacus's optimizer replaces the gradient with its clipped, noised sum, so a
    hook's term would be lost): it depends only on the weights and the global model, so it is post-processing and
    costs no privacy.
    """
    if not mu:
        yield
        return
    if mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu}")
    anchors = [(param, param.detach().clone()) for param in model.parameters()]
    if dp_session is not None:

        def add_term() -> None:
            with torch.no_grad():
                for param, anchor in anchors:
                    if param.grad is not None:
                        param.grad.add_(param.detach() - anchor, alpha=mu)

        dp_session.after_noise.append(add_term)
        try:
            yield
        finally:
            dp_session.after_noise.remove(add_term)
        return
    handles = [
        param.register_hook(lambda grad, p=param, a=anchor: grad + mu * (p.detach() - a)) for param, anchor in anchors
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
