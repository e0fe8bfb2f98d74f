"""The prod end-to-end app's validator; it fails at the site config.json names in FAIL_VALIDATION_AT (a site
failure the hub must receive)."""

import torch
from dicom_digits import load_cohort, split


class FLIP_VALIDATOR:
    def __init__(self, config: dict):
        self.config = config
        self.data = None

    def validate(self, model, ctx) -> dict:
        if ctx.site_name == self.config.get("FAIL_VALIDATION_AT"):
            raise RuntimeError("this site's validation fails on purpose")
        if self.data is None:
            _, _, x_val, y_val = split(*load_cohort(self.config, ctx.site_name))
            self.data = (x_val, y_val)
        x_val, y_val = self.data
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        return {
            "accuracy": (logits.argmax(1) == y_val).float().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, y_val).item(),
            "num_samples": len(y_val),
        }
