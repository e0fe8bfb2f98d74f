"""A small 3-D MONAI UNet (two classes: background, organ)."""

import json
from pathlib import Path

import torch
from monai.networks.nets import UNet

NET = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())["net_config"]


def get_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(
        spatial_dims=NET["spatial_dims"],
        in_channels=1,
        out_channels=2,
        channels=tuple(NET["channels"]),
        strides=tuple(NET["strides"]),
        num_res_units=0,
    )
