"""A small CNN with batch normalisation for 8x8 grey images."""

import json
from pathlib import Path

import torch
from torch import nn

CONFIG = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, kernel_size=3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Linear(8 * 4 * 4, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def get_model() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN(num_classes=len(CONFIG["CLASSES"]))
