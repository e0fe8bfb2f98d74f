"""Accuracy of the whole two-stage model and the denoiser's reconstruction error, on local validation images."""

import torch
from digits_data import load_folder, train_val_split


class FLIP_VALIDATOR:
    def __init__(self, config: dict):
        self.noise = float(config.get("NOISE", 0.3))
        self.data = None

    def validate(self, model, ctx) -> dict:
        if self.data is None:
            _, _, x_val, y_val = train_val_split(*load_folder(ctx.data_dir))
            self.data = (x_val, y_val)
        x_val, y_val = self.data
        model.eval()
        clean = x_val.reshape(len(x_val), -1)
        noisy = clean + self.noise * torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
            reconstruction = torch.nn.functional.mse_loss(model.denoise(noisy), clean).item()
        return {"accuracy": accuracy, "denoise_mse": reconstruction, "num_samples": len(y_val)}
