"""Trains the stage the server asks for (ctx.stage); the other stage's parameters stay frozen."""

import torch
from digits_data import load_folder, train_val_split


class FLIP_TRAINER:
    def __init__(self, config: dict):
        self.epochs = int(config.get("LOCAL_ROUNDS", 2))
        self.lr = float(config.get("LEARNING_RATE", 0.01))
        self.noise = float(config.get("NOISE", 0.3))
        self.batch_size = int(config.get("BATCH_SIZE", 32))
        self.data = None

    def train(self, model, ctx) -> dict:
        if self.data is None:
            self.data = train_val_split(*load_folder(ctx.data_dir))
        x_train, y_train, x_val, y_val = self.data
        stage = ctx.stage or "classify"
        part = model.denoiser if stage == "denoise" else model.classifier
        for name, param in model.named_parameters():
            param.requires_grad = name.startswith(f"{'denoiser' if stage == 'denoise' else 'classifier'}.")
        optimizer = torch.optim.Adam(part.parameters(), lr=self.lr)
        generator = torch.Generator().manual_seed(1000 * ctx.round + 11)
        model.train()
        steps, total = 0, 0.0
        for _ in range(self.epochs):
            order = torch.randperm(len(y_train), generator=generator)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                if ctx.should_abort():
                    return {"num_samples": len(y_train), "num_steps": max(steps, 1)}
                batch = order[start : start + self.batch_size]
                clean = x_train[batch].reshape(len(batch), -1)
                optimizer.zero_grad()
                if stage == "denoise":
                    noisy = clean + self.noise * torch.randn(clean.shape, generator=generator)
                    loss = torch.nn.functional.mse_loss(model.denoise(noisy), clean)
                else:
                    loss = torch.nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                steps += 1
        for param in model.parameters():
            param.requires_grad = True
        metrics = {"num_samples": len(y_train), "num_steps": steps, f"{stage}_loss": total / len(y_train)}
        if stage == "classify":
            model.eval()
            with torch.no_grad():
                metrics["accuracy"] = (model(x_val).argmax(1) == y_val).float().mean().item()
        return metrics
