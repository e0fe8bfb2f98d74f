"""The demo's evaluator (evaluation-only jobs): a model's accuracy and loss on all of this site's images."""

import torch
from digits_data import load_folder


class FLIP_EVALUATOR:
    def __init__(self, config: dict):
        self.data = None

    def evaluate(self, model, ctx) -> dict:
        if self.data is None:
            self.data = load_folder(ctx.data_dir)
        images, labels = self.data
        model.eval()
        with torch.no_grad():
            logits = model(images.to(ctx.device)).cpu()
        return {
            "accuracy": (logits.argmax(1) == labels).float().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
            "num_samples": len(labels),
        }
