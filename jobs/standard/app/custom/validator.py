"""The demo's validator: accuracy and loss of a model on this site's local validation images."""

import torch
from digits_data import load_folder, train_val_split


class FLIP_VALIDATOR:
    def __init__(self, config: dict):
        self.data = None

    def validate(self, model, ctx) -> dict:
        if self.data is None:
            _, _, x_val, y_val = train_val_split(*load_folder(ctx.data_dir))
            self.data = (x_val, y_val)
        x_val, y_val = self.data
        model.eval()
        with torch.no_grad():
            logits = model(x_val.to(ctx.device)).cpu()
        return {
            "accuracy": (logits.argmax(1) == y_val).float().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, y_val).item(),
            "num_samples": len(y_val),
        }
