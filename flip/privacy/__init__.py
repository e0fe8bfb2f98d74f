"""Privacy math (no NVFlare import): the percentile policy, client-level (ε, δ) DP, record-level DP-SGD, the site's
ledger, what may be released under DP; and Opacus's fix for models DP-SGD cannot train, :func:`fix_model`.

User code makes its training private with ``flip.utils.make_private`` (FLIP's contracts); our plain contract's
trainer needs no call (the runner makes it private, :mod:`flip.privacy.automatic`) or calls ``ctx.make_private``."""

__all__ = ["fix_model"]


def __getattr__(name: str):
    if name == "fix_model":  # on first use: torch and Opacus are not imported with the package (flip provision)
        from flip.privacy.dp_sgd import fix_model

        return fix_model
    raise AttributeError(f"module 'flip.privacy' has no attribute {name!r}")
