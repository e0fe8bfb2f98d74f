"""The demo's trainer: plain PyTorch, no nvflare import. Replace with your own FLIP_TRAINER.

At a site whose privacy policy asks for record-level DP, the runner trains it with DP-SGD as it is: the batches of
the DataLoader iterated in training mode are Poisson-sampled, each step's gradient is clipped per record and noised
(Opacus), for config.json's LOCAL_ROUNDS epochs per round."""

import torch
from digits_data import load_folder, train_val_split


class FLIP_TRAINER:
    def __init__(self, config: dict):
        self.epochs = int(config.get("LOCAL_ROUNDS", 2))
        self.lr = float(config.get("LEARNING_RATE", 0.05))
        self.batch_size = int(config.get("BATCH_SIZE", 32))
        self.data = None

    def train(self, model, ctx) -> dict:
        if self.data is None:
            self.data = train_val_split(*load_folder(ctx.data_dir))
        x_train, y_train, x_val, y_val = self.data
        generator = torch.Generator().manual_seed(1000 * ctx.round + 7)
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x_train, y_train),
            batch_size=self.batch_size,
            shuffle=True,
            generator=generator,
        )
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        steps, epoch_loss = 0, 0.0
        for _ in range(self.epochs):
            total = 0.0
            for images, labels in loader:
                if ctx.should_abort():
                    return {"num_samples": len(y_train), "num_steps": max(steps, 1)}
                optimizer.zero_grad()
                loss = loss_fn(model(images.to(ctx.device)), labels.to(ctx.device))
                loss.backward()
                optimizer.step()
                total += loss.item() * len(labels) if len(labels) else 0.0
                steps += 1
            epoch_loss = total / len(y_train)
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_val.to(ctx.device)).argmax(1).cpu() == y_val).float().mean().item()
        return {"num_samples": len(y_train), "num_steps": steps, "loss": epoch_loss, "accuracy": accuracy}
