"""The demo's hospitals: scikit-learn's 8x8 digits (shipped with the package, offline) as PNG images.

Each site gets a non-IID share (mostly the digits ``label % n_sites == site index``), written as
``<local_dir>/cohorts/<site>/<label>/<n>.png``, the dev platform's stand-in for a hospital's image store.
A held-out 20% is never given to any site; tests and the demo's summary score the final model on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

HOLDOUT_FRACTION = 0.2
PREFERRED_SHARE = 0.75


def to_pixels(x: np.ndarray) -> np.ndarray:
    """digits values 0..16 -> uint8 grey levels, as written to the PNG files."""
    return np.rint(np.asarray(x, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)


def as_model_input(x: np.ndarray) -> np.ndarray:
    """digits values 0..16 -> the [0, 1] floats the demo's trainer reads back from its PNG files."""
    return to_pixels(x).astype(np.float32).reshape(-1, 8, 8) / 255.0


def split_digits(site_names: list[str], seed: int = 0) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple]:
    """Split digits into a non-IID share per site and a held-out set.

    Returns:
        ({site: (images [n, 64] in 0..16, labels [n])}, (holdout_images, holdout_labels))
    """
    from sklearn.datasets import load_digits

    if not site_names:
        raise ValueError("site_names must name at least one site")
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.target))
    n_holdout = int(len(order) * HOLDOUT_FRACTION)
    holdout, train = order[:n_holdout], order[n_holdout:]
    n_sites = len(site_names)
    owner = np.empty(len(train), dtype=np.int64)
    for i, idx in enumerate(train):
        preferred = int(digits.target[idx]) % n_sites
        if n_sites == 1 or rng.random() < PREFERRED_SHARE:
            owner[i] = preferred
        else:
            owner[i] = rng.choice([s for s in range(n_sites) if s != preferred])
    shares = {
        name: (digits.data[train[owner == s]], digits.target[train[owner == s]]) for s, name in enumerate(site_names)
    }
    return shares, (digits.data[holdout], digits.target[holdout])


def write_cohorts(local_dir: Path, site_names: list[str], seed: int = 0) -> dict[str, int]:
    """Write each site's share as PNG images under ``<local_dir>/cohorts/<site>/``; return images per site."""
    shares, _ = split_digits(site_names, seed)
    counts = {}
    for site, (images, labels) in shares.items():
        folder = Path(local_dir) / "cohorts" / site
        for n, (image, label) in enumerate(zip(images, labels)):
            target = folder / str(int(label)) / f"{n:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(to_pixels(image).reshape(8, 8), mode="L").save(target)
        counts[site] = len(labels)
    return counts


def holdout_accuracy(state_dict, seed: int = 0, app_dir: Path | None = None) -> float:
    """Accuracy on the held-out digits of the demo model (``app_dir``'s models.py) with ``state_dict`` loaded."""
    import importlib.util

    import torch

    models = Path(app_dir or Path(__file__).parent / "app") / "models.py"
    spec = importlib.util.spec_from_file_location(f"flip_demo_models_{models.parent.name}", models)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.get_model()
    model.load_state_dict(state_dict)
    model.eval()
    _, (x, y) = split_digits(["site-1", "site-2"], seed)  # the held-out set does not depend on the sites
    with torch.no_grad():
        predicted = model(torch.from_numpy(as_model_input(x))).argmax(1).numpy()
    return float((predicted == y).mean())
