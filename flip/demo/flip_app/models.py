"""The demo's model: a small MLP for 8x8 digit images (FLIP's models.py: get_model() with no arguments)."""

import torch


class DigitsNet(torch.nn.Module):
    def __init__(self, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, 10),
        )

    def forward(self, x):
        return self.layers(x)


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)  # every site and the server start from the same weights
    return DigitsNet()


#: an evaluation loads each checkpoint of config.json "models" into model_paths[<path>]
model_paths = {"digits": DigitsNet()}
