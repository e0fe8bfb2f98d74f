"""How much a client-level (ε, δ) budget leaves to learn from, on the demo's digits, by number of sites.

GaussianPrivacy releases each site's update clipped to L2 norm C plus N(0, (z·C)²) per entry every round. Under
RDP accounting, T rounds at noise multiplier z cost exactly what one release at z/√T costs, so no schedule of
rounds beats the best single release. This script measures that best case: every site sends the same, ideal
update (the direction of the best non-private linear classifier on all sites' images, at norm C), the server
averages n such releases, and the held-out digits are scored with the noisy average. Real training sends less
useful updates than this, so its accuracy under DP is lower still.

One line per site count: ``dp_utility epsilon=8 sites=<n> best_case_accuracy=<a> no_dp=<b>`` (mean over
``--draws`` noise draws; chance is 0.1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip.demo.data import as_model_input, split_digits  # noqa: E402
from flip.privacy.gaussian import calibrate_noise, clip_and_noise, make_rng  # noqa: E402

DELTA = 1e-5


def ideal_update() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best non-private linear classifier's weights (with bias column), and the held-out images and labels.

    Trained on every image the sites hold together (the split between sites does not change the pool).
    """
    from sklearn.linear_model import LogisticRegression

    shares, (images, labels) = split_digits(["all-sites"])
    (x, y), = shares.values()
    x = as_model_input(x).reshape(len(x), -1)
    model = LogisticRegression(C=0.1, max_iter=2000).fit(x, y)
    weights = np.concatenate([model.coef_, model.intercept_[:, None]], axis=1)
    held_out = np.concatenate([as_model_input(images).reshape(len(images), -1), np.ones((len(images), 1))], axis=1)
    return weights, held_out, labels


def accuracy(weights: np.ndarray, held_out: np.ndarray, labels: np.ndarray) -> float:
    return float(((held_out @ weights.T).argmax(axis=1) == labels).mean())


def best_case(epsilon: float, sites: int, draws: int, clip_norm: float = 1.0) -> tuple[float, float]:
    weights, held_out, labels = ideal_update()
    z = calibrate_noise(epsilon, DELTA, rounds=1)
    rng = make_rng(0)
    scores = []
    for _ in range(draws):
        releases = [clip_and_noise({"w": weights.astype(np.float32)}, clip_norm, z, rng)[0]["w"] for _ in range(sites)]
        scores.append(accuracy(np.mean(releases, axis=0), held_out, labels))
    return float(np.mean(scores)), accuracy(weights, held_out, labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 10, 50, 200])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"noise multiplier of the single best release at ε={args.epsilon:g}, δ={DELTA:g}: "
          f"{calibrate_noise(args.epsilon, DELTA, rounds=1):.3f}")
    for sites in args.sites:
        best, clear = best_case(args.epsilon, sites, args.draws)
        print(f"dp_utility epsilon={args.epsilon:g} sites={sites} best_case_accuracy={best:.3f} no_dp={clear:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
