"""A two-stage, diffusion-style model for 8x8 digits.

Stage "denoise" trains a denoiser (noisy image -> clean image); stage "classify" trains a classifier on the
frozen denoiser's output. STAGES tells flip which parameters each stage trains (name prefixes).
"""

import torch

STAGES = {"denoise": ["denoiser."], "classify": ["classifier."]}


class TwoStageNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.denoiser = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.Sigmoid()
        )
        self.classifier = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

    def denoise(self, x):
        return self.denoiser(x)

    def forward(self, x):
        return self.classifier(self.denoiser(x))


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TwoStageNet()
