"""The prod end-to-end app's trainer: plain PyTorch on the cohort the site's trust gives (dicom_digits)."""

import torch
from dicom_digits import load_cohort, split


class FLIP_TRAINER:
    def __init__(self, config: dict):
        self.config = config
        self.epochs = int(config.get("LOCAL_ROUNDS", 1))
        self.lr = float(config.get("LEARNING_RATE", 0.1))
        self.data = None

    def train(self, model, ctx) -> dict:
        if self.data is None:
            self.data = split(*load_cohort(self.config, ctx.site_name))
        x_train, y_train, x_val, y_val = self.data
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        steps, loss = 0, 0.0
        for _ in range(self.epochs):
            for start in range(0, len(y_train), 16):
                optimizer.zero_grad()
                batch_loss = loss_fn(model(x_train[start : start + 16]), y_train[start : start + 16])
                batch_loss.backward()
                optimizer.step()
                loss, steps = batch_loss.item(), steps + 1
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val).argmax(1) == y_val).float().mean().item()
        return {"num_samples": len(y_train), "num_steps": steps, "loss": loss, "accuracy": accuracy}
