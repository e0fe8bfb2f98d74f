"""``make_private``: the one call a trainer makes for record-level DP-SGD at a site whose policy asks for it."""

from __future__ import annotations

from typing import Any


def make_private(model: Any, optimizer: Any, data_loader: Any, fl_ctx: Any = None, epochs: int = 1):
    """Return ``(model, optimizer, data_loader)`` made private for this round by the site's DP policy.

    At a site whose privacy policy (``SitePrivacyPolicy`` in its ``local/privacy.json``) asks for record-level
    DP, the optimizer clips every record's gradient to the site's ``max_grad_norm`` and adds Gaussian noise
    calibrated to the site's ``target_epsilon`` over the job's rounds, and the data loader draws Poisson-sampled
    batches (Opacus); the model is returned as it is (Opacus's hooks are attached for this round and removed
    after it). Everywhere else the three come back unchanged, so one trainer runs with or without DP. Call it
    once per round, after building the optimizer and the data loader, and train with what it returns::

        from flip.utils import make_private
        model, optimizer, loader = make_private(model, optimizer, loader, fl_ctx, epochs=self._epochs)

    Args:
        model: the ``torch.nn.Module`` being trained.
        optimizer: a ``torch.optim.Optimizer`` over its parameters.
        data_loader: a ``torch.utils.data.DataLoader`` of the site's training records (one per sample).
        fl_ctx: the task's FLContext (a FLIP app's ``execute`` has it); None (a MONAI ClientAlgo has none): the
            policy of the training task the runner is running in this thread, if any.
        epochs: passes over ``data_loader`` this round (the noise is calibrated for them; steps beyond the job's
            planned ones are not taken). Default 1.

    Raises:
        flip.privacy.dp_sgd.DPModelError: a layer DP-SGD cannot train (named, with the fix
            ``flip.privacy.fix_model``).
        flip.errors.PrivacyError: the data loader or optimizer cannot be made private (named).
    """
    from flip.nvflare.components.site_privacy_policy import site_policy

    policy = site_policy(fl_ctx)
    if policy is None:
        return model, optimizer, data_loader
    return policy.make_private(model, optimizer, data_loader, epochs=epochs, fl_ctx=fl_ctx)
