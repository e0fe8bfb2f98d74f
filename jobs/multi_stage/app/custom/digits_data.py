"""Read a site's digit images (PNG files under <label>/) into tensors; split off a local validation part."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_folder(folder: Path):
    """Return (images [N, 8, 8] in [0, 1], labels [N]) for every <label>/<name>.png under folder, sorted."""
    files = sorted(Path(folder).glob("*/*.png"))
    if not files:
        raise FileNotFoundError("no PNG images under the site's data folder")
    images = np.stack([np.asarray(Image.open(f), dtype=np.float32) / 255.0 for f in files])
    labels = np.array([int(f.parent.name) for f in files], dtype=np.int64)
    return torch.from_numpy(images), torch.from_numpy(labels)


def train_val_split(images, labels, every: int = 5):
    """Every `every`-th image is kept for local validation."""
    index = torch.arange(len(labels))
    val = index % every == 0
    return images[~val], labels[~val], images[val], labels[val]
