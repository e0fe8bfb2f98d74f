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

Then record-level DP (``--record-level``, on by default): DP-SGD at each of the demo's 2 sites, the code a site's
record-level policy runs (flip.privacy.dp_sgd.DPSession: Opacus, one noise multiplier calibrated for all of a
job's steps, RDP accounting), on the demo's data split and model (the FLIP app's), with the demo's record-level
training (flip.demo.run.RECORD_LEVEL_TRAINING: 3 rounds × 5 epochs, batches of 64 by Poisson sampling, SGD lr 0.2
with momentum, max_grad_norm 1) and FedAvg of the two sites, in process (no simulator). Held-out accuracy (mean
over ``--seeds`` noise seeds) against the same training without DP, and DP-SGD's time per epoch against plain
training's (same batch size, one thread). One line per ε, the ε = 8 line last:
``dp_record_level epsilon=<ε> accuracy=<a> no_dp_accuracy=<b> slowdown=<s>``. Before them, the largest ε again with
the loop left without make_private (flip.privacy.automatic makes it private, as for an unchanged plain trainer):
``dp_record_level_automatic epsilon=<ε> accuracy=<a> make_private_accuracy=<b> epsilon_spent=<e>
time_ratio=<automatic / make_private seconds per epoch>``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import warnings
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
    ((x, y),) = shares.values()
    held_out = np.concatenate([as_model_input(images).reshape(len(images), -1), np.ones((len(images), 1))], axis=1)
    return as_model_input(x).reshape(len(x), -1), y, held_out, labels


def fit_linear(x: np.ndarray, y: np.ndarray, **options) -> np.ndarray:
    """A non-private logistic regression's weights, with the bias as the last column."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(**options).fit(x, y)
    return np.concatenate([model.coef_, model.intercept_[:, None]], axis=1)


def accuracy(weights: np.ndarray, held_out: np.ndarray, labels: np.ndarray) -> float:
    return float(((held_out @ weights.T).argmax(axis=1) == labels).mean())


def best_case(
    weights: np.ndarray,
    held_out: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    sites: int,
    draws: int,
    clip_norm: float = 1.0,
) -> float:
    """Mean accuracy of ``sites`` noisy releases of the ideal update ``weights``, averaged."""
    z = calibrate_noise(epsilon, DELTA, rounds=1)
    rng = make_rng(0)
    scores = []
    for _ in range(draws):
        releases = [clip_and_noise({"w": weights.astype(np.float32)}, clip_norm, z, rng)[0]["w"] for _ in range(sites)]
        scores.append(accuracy(np.mean(releases, axis=0), held_out, labels))
    return float(np.mean(scores))


def fine_tune(
    x: np.ndarray,
    y: np.ndarray,
    held_out: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    sites: int,
    public: int,
    steps: list[float],
    draws: int,
) -> tuple[float, dict]:
    """Held-out accuracy of the public model, and mean accuracy after one ideal noisy update of each length."""
    rng = make_rng(0)
    chosen = rng.permutation(len(x))[:public]
    start, target = fit_linear(x[chosen], y[chosen], max_iter=3000), fit_linear(x, y, max_iter=3000)
    direction = (target - start) / np.linalg.norm(target - start)
    z = calibrate_noise(epsilon, DELTA, rounds=1)
    scores = {}
    for step in steps:
        noisy = [
            start + step * (direction + rng.standard_normal(direction.shape) * z / np.sqrt(sites)) for _ in range(draws)
        ]
        scores[step] = float(np.mean([accuracy(w, held_out, labels) for w in noisy]))
    return accuracy(start, held_out, labels), scores


def _demo_model_module():
    """The demo FLIP app's models.py (get_model(): the same seeded start at every site and the server)."""
    path = Path(__file__).resolve().parents[1] / "flip" / "demo" / "flip_app" / "models.py"
    spec = importlib.util.spec_from_file_location("flip_demo_flip_app_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_level(
    epsilon: float | None,
    seed: int = 0,
    rounds: int = 3,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 0.2,
    max_grad_norm: float = 1.0,
    automatic: bool = False,
) -> tuple[float, float, float]:
    """Train the demo's 2 sites with FedAvg, each with DP-SGD at ``epsilon`` (None: no DP); return the held-out
    accuracy, the seconds per local epoch, and the largest ε a site spent. ``automatic``: the loop does not call
    make_private; the runner's AutomaticDP makes it private (what a plain trainer without the call gets)."""
    from contextlib import nullcontext

    import torch

    from flip.privacy.automatic import AutomaticDP
    from flip.privacy.dp_sgd import DPSession, RecordLevelPolicy

    models = _demo_model_module()
    shares, (held_x, held_y) = split_digits(["site-1", "site-2"])
    data = {}
    for site, (x, y) in shares.items():
        x, y = torch.from_numpy(as_model_input(x)), torch.from_numpy(y).long()
        train = torch.arange(len(y)) % 5 != 0  # the demo trainer keeps every 5th image for local validation
        data[site] = torch.utils.data.TensorDataset(x[train], y[train])
    sessions = (
        {
            site: DPSession(
                RecordLevelPolicy(target_epsilon=epsilon, delta=DELTA, max_grad_norm=max_grad_norm),
                total_rounds=rounds,
                seed=1000 * seed + i,
            )
            for i, site in enumerate(data)
        }
        if epsilon is not None
        else {}
    )
    global_model = models.get_model()
    seconds, trained_epochs = 0.0, 0
    for r in range(rounds):
        states = []
        for site, dataset in data.items():
            model = models.get_model()
            model.load_state_dict(global_model.state_dict())
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(1000 * r + seed)
            )
            around = nullcontext()
            if sessions:
                sessions[site].begin_round()
                if automatic:  # the job's noise calibrated before the clock, as make_private does it below
                    sessions[site].prepare(loader, epochs)
                    around = AutomaticDP(sessions[site], model, epochs)
                else:
                    model, optimizer, loader = sessions[site].make_private(model, optimizer, loader, epochs=epochs)
            model.train()
            started = time.perf_counter()
            with around:
                for _ in range(epochs):
                    for images, labels in loader:
                        optimizer.zero_grad()
                        torch.nn.functional.cross_entropy(model(images), labels).backward()
                        optimizer.step()
            seconds += time.perf_counter() - started
            trained_epochs += epochs
            if sessions:
                sessions[site].end_round()
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        global_model.load_state_dict({k: sum(s[k] for s in states) / len(states) for k in states[0]})
    global_model.eval()
    with torch.no_grad():
        predicted = global_model(torch.from_numpy(as_model_input(held_x))).argmax(1).numpy()
    spent = max((s.epsilon() for s in sessions.values()), default=0.0)
    return float((predicted == held_y).mean()), seconds / trained_epochs, spent


def record_level_rows(epsilons: list[float], seeds: int) -> None:
    """Print a detail line per ε, then one ``dp_record_level`` line per ε (the largest last)."""
    import torch

    torch.set_num_threads(1)  # time per epoch on one core, for both
    warnings.filterwarnings("ignore")  # Opacus's "secure RNG" and the backward-hook notes
    plain = [record_level(None, seed) for seed in range(seeds)]
    no_dp, plain_epoch = float(np.mean([a for a, _, _ in plain])), float(np.median([t for _, t, _ in plain]))
    rows = []
    for epsilon in sorted(epsilons):
        runs = [record_level(epsilon, seed) for seed in range(seeds)]
        dp_epoch = float(np.median([t for _, t, _ in runs]))
        print(
            f"dp_record_level_detail epsilon={epsilon:g} delta={DELTA:g} accuracies="
            + ",".join(f"{a:.3f}" for a, _, _ in runs)
            + " no_dp_accuracies="
            + ",".join(f"{a:.3f}" for a, _, _ in plain)
            + f" epsilon_spent={max(e for _, _, e in runs):.4f} "
            f"dp_seconds_per_epoch={dp_epoch:.4f} plain_seconds_per_epoch={plain_epoch:.4f}",
            flush=True,
        )
        rows.append(
            f"dp_record_level epsilon={epsilon:g} accuracy={np.mean([a for a, _, _ in runs]):.3f} "
            f"no_dp_accuracy={no_dp:.3f} slowdown={dp_epoch / plain_epoch:.2f}"
        )
    # the same DP-SGD made by the runner around a loop without make_private (our plain contract, unchanged code)
    epsilon = max(epsilons)
    runs = [record_level(epsilon, seed) for seed in range(seeds)]
    auto = [record_level(epsilon, seed, automatic=True) for seed in range(seeds)]
    print(
        f"dp_record_level_automatic epsilon={epsilon:g} accuracy={np.mean([a for a, _, _ in auto]):.3f} "
        f"make_private_accuracy={np.mean([a for a, _, _ in runs]):.3f} "
        f"epsilon_spent={max(e for _, _, e in auto):.4f} "
        f"time_ratio={np.median([t for _, t, _ in auto]) / np.median([t for _, t, _ in runs]):.2f}",
        flush=True,
    )
    print("\n".join(rows), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 10, 50, 200])
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--public", type=int, default=100, help="public images behind the fine-tuning start model")
    parser.add_argument("--steps", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    parser.add_argument(
        "--record-epsilons",
        type=float,
        nargs="+",
        default=[1.0, 3.0, 8.0],
        help="record-level DP-SGD rows (the largest ε is the last line)",
    )
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds per record-level row")
    parser.add_argument("--no-client-level", action="store_true", help="only the record-level rows")
    args = parser.parse_args(argv)
    if args.no_client_level:
        record_level_rows(args.record_epsilons, args.seeds)
        return
    print(
        f"noise multiplier of the single best release at ε={args.epsilon:g}, δ={DELTA:g}: "
        f"{calibrate_noise(args.epsilon, DELTA, rounds=1):.3f}"
    )
    x, y, held_out, labels = pooled_digits()
    ideal = fit_linear(x, y, C=0.1, max_iter=2000)
    clear = accuracy(ideal, held_out, labels)
    for sites in args.sites:
        best = best_case(ideal, held_out, labels, args.epsilon, sites, args.draws)
        print(
            f"dp_utility epsilon={args.epsilon:g} sites={sites} best_case_accuracy={best:.3f} no_dp={clear:.3f}",
            flush=True,
        )
    start, scores = fine_tune(
        x, y, held_out, labels, args.epsilon, min(args.sites), args.public, args.steps, args.draws
    )
    for step, score in scores.items():
        print(
            f"dp_utility epsilon={args.epsilon:g} sites={min(args.sites)} fine_tune public={args.public} "
            f"step={step:g} accuracy={score:.3f} start={start:.3f}",
            flush=True,
        )
    record_level_rows(args.record_epsilons, args.seeds)


if __name__ == "__main__":
    main()
