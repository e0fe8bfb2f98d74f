"""How much a client-level (ε, δ) budget leaves to learn from, on the demo's digits, by number of sites.

GaussianPrivacy releases each site's update clipped to L2 norm C plus N(0, (z·C)²) per entry every round. Under
RDP accounting, T rounds at noise multiplier z cost exactly what one release at z/√T costs, so no schedule of
rounds beats the best single release. This script measures that best case: every site sends the same, ideal
update (the direction of the best non-private linear classifier on all sites' images, at norm C), the server
averages n such releases, and the held-out digits are scored with the noisy average. Real training sends less
useful updates than this, so its accuracy under DP is lower still.

One line per site count: ``dp_utility epsilon=8 sites=<n> best_case_accuracy=<a> no_dp=<b>`` (mean over
``--draws`` noise draws; chance is 0.1).

Then the fine-tuning case, the usual way out for few clients: the sites start from a model trained on public
images (``--public`` of them, taken from the sites' pool, as a platform's safehouse model would be) and send the
ideal update towards the all-sites model, scaled to total length L (the clip norm summed over rounds). Near a good
model the update's gain is first order in L and the noise's harm second order, so some small L might help: one line
per L, ``dp_utility epsilon=8 sites=<n> fine_tune public=<p> step=<L> accuracy=<a> start=<s>``.
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


def pooled_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every image the sites hold together, flattened (the split between sites does not change the pool), and the
    held-out images with a bias column, and their labels."""
    shares, (images, labels) = split_digits(["all-sites"])
    (x, y), = shares.values()
    held_out = np.concatenate([as_model_input(images).reshape(len(images), -1), np.ones((len(images), 1))], axis=1)
    return as_model_input(x).reshape(len(x), -1), y, held_out, labels


def fit_linear(x: np.ndarray, y: np.ndarray, **options) -> np.ndarray:
    """A non-private logistic regression's weights, with the bias as the last column."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(**options).fit(x, y)
    return np.concatenate([model.coef_, model.intercept_[:, None]], axis=1)


def accuracy(weights: np.ndarray, held_out: np.ndarray, labels: np.ndarray) -> float:
    return float(((held_out @ weights.T).argmax(axis=1) == labels).mean())


def best_case(weights: np.ndarray, held_out: np.ndarray, labels: np.ndarray, epsilon: float, sites: int, draws: int,
              clip_norm: float = 1.0) -> float:
    """Mean accuracy of ``sites`` noisy releases of the ideal update ``weights``, averaged."""
    z = calibrate_noise(epsilon, DELTA, rounds=1)
    rng = make_rng(0)
    scores = []
    for _ in range(draws):
        releases = [clip_and_noise({"w": weights.astype(np.float32)}, clip_norm, z, rng)[0]["w"] for _ in range(sites)]
        scores.append(accuracy(np.mean(releases, axis=0), held_out, labels))
    return float(np.mean(scores))


def fine_tune(x: np.ndarray, y: np.ndarray, held_out: np.ndarray, labels: np.ndarray, epsilon: float, sites: int,
              public: int, steps: list[float], draws: int) -> tuple[float, dict]:
    """Held-out accuracy of the public model, and mean accuracy after one ideal noisy update of each length."""
    rng = make_rng(0)
    chosen = rng.permutation(len(x))[:public]
    start, target = fit_linear(x[chosen], y[chosen], max_iter=3000), fit_linear(x, y, max_iter=3000)
    direction = (target - start) / np.linalg.norm(target - start)
    z = calibrate_noise(epsilon, DELTA, rounds=1)
    scores = {}
    for step in steps:
        noisy = [start + step * (direction + rng.standard_normal(direction.shape) * z / np.sqrt(sites))
                 for _ in range(draws)]
        scores[step] = float(np.mean([accuracy(w, held_out, labels) for w in noisy]))
    return accuracy(start, held_out, labels), scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 10, 50, 200])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--public", type=int, default=100, help="public images behind the fine-tuning start model")
    parser.add_argument("--steps", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    args = parser.parse_args(argv)
    print(f"noise multiplier of the single best release at ε={args.epsilon:g}, δ={DELTA:g}: "
          f"{calibrate_noise(args.epsilon, DELTA, rounds=1):.3f}")
    x, y, held_out, labels = pooled_digits()
    ideal = fit_linear(x, y, C=0.1, max_iter=2000)
    clear = accuracy(ideal, held_out, labels)
    for sites in args.sites:
        best = best_case(ideal, held_out, labels, args.epsilon, sites, args.draws)
        print(f"dp_utility epsilon={args.epsilon:g} sites={sites} best_case_accuracy={best:.3f} no_dp={clear:.3f}",
              flush=True)
    start, scores = fine_tune(x, y, held_out, labels, args.epsilon, min(args.sites), args.public, args.steps,
                              args.draws)
    for step, score in scores.items():
        print(f"dp_utility epsilon={args.epsilon:g} sites={min(args.sites)} fine_tune public={args.public} "
              f"step={step:g} accuracy={score:.3f} start={start:.3f}", flush=True)


if __name__ == "__main__":
    main()
