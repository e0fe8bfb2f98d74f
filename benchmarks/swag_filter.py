"""How much the sites' privacy filter distorts SWAG's variance, before and after the fix, on the demo.

Two sites of the demo's digits (the demo's non-IID split) start from one global model (the demo MLP trained on both
sites' images) and run SWAG's round as RUN_TRAINER does: ``--swag-epochs`` calls of the demo trainer (2 epochs of SGD,
lr 0.05, momentum 0.9, batches of 32), a snapshot after each. Each site's statistics then pass PercentilePrivacy's
policy (10th percentile, gamma 0.01 per step, divided by the round's steps as the filter does), each part with its
own threshold, and the server pools them. Compared, per layer, with the SWAG standard deviation of the same
snapshots unfiltered (the exact pooled variance):

- ``scheme=moments`` (before): the sites sent their snapshots' mean and second moment as differences to the global
  model, ``mean − w`` and ``mean(w_k²) − w²``; the server took ``E[w²] − E[w]²`` and clamped it at 0;
- ``scheme=deviation`` (flip.methods.swag now): the sites send ``mean − w`` and each weight's standard deviation
  around their own mean; the server pools by the law of total variance.

One line per filter setting and scheme: ``swag_filter percentile=<p> gamma=<g> scheme=<s> max_rel_error_std=<e>
zero_variance=<f> layers=<name>:<e>,...`` where e is ``‖std_filtered − std_unfiltered‖ / ‖std_unfiltered‖`` over a
layer and f the share of weights whose filtered variance is exactly 0. At the demo's own setting (10, 0.01) the
filter changes nothing here: a fifth of the first layer's weights never move (the digits' blank border pixels), so
the 10th percentile of every part is 0, and no SWAG statistic reaches gamma × steps. The stricter settings show what
the filter does when it bites.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flip.demo.data import as_model_input, split_digits  # noqa: E402
from flip.methods import swag  # noqa: E402
from flip.methods.weighted import weighted_mean  # noqa: E402
from flip.privacy.percentile import percentile_filter  # noqa: E402

DEMO_APP_DIR = Path(__file__).resolve().parents[1] / "flip" / "demo" / "app"
SITES = ["site-1", "site-2"]
DEFAULT_SETTINGS = ["10:0.01", "25:0.001", "50:0.01", "50:0.001"]


def demo_model() -> torch.nn.Module:
    """The demo's MLP: flip/demo/app/models.py's get_model()."""
    spec = importlib.util.spec_from_file_location("_swag_filter_demo_models", DEMO_APP_DIR / "models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_model()


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> int:
    """The demo trainer's loop (SGD 0.05, momentum 0.9, batches of 32); return the optimizer steps taken."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    steps = 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss_fn(model(x[batch]), y[batch]).backward()
            optimizer.step()
            steps += 1
    return steps


def site_data() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    shares, _ = split_digits(SITES)
    return {
        s: (torch.from_numpy(as_model_input(x)), torch.from_numpy(y.astype(np.int64))) for s, (x, y) in shares.items()
    }


def snapshots_per_site(data, swag_epochs: int, global_epochs: int):
    """The global model's weights and, per site, its SWAG snapshots, steps and samples."""
    model = demo_model()
    x_all = torch.cat([x for x, _ in data.values()])
    y_all = torch.cat([y for _, y in data.values()])
    train(model, x_all, y_all, global_epochs, seed=1)
    global_weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    sites = {}
    for i, (site, (x, y)) in enumerate(sorted(data.items())):
        local = demo_model()
        local.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in global_weights.items()})
        shots, steps = [], 0
        for epoch in range(swag_epochs):
            steps += train(local, x, y, 2, seed=100 * i + epoch)
            shots.append({k: v.detach().numpy().copy() for k, v in local.state_dict().items()})
        sites[site] = (shots, steps, len(y))
    return global_weights, sites


def legacy_moments(shots, global_weights):
    """The scheme before the fix: mean − w and mean(w_k²) − w²."""
    mean_d, sq_d = {}, {}
    for name, w in global_weights.items():
        stack = np.stack([s[name].astype(np.float64) for s in shots])
        mean_d[name] = (stack.mean(0) - w).astype(w.dtype)
        sq_d[name] = ((stack**2).mean(0) - w.astype(np.float64) ** 2).astype(w.dtype)
    return mean_d, sq_d


def legacy_aggregate(global_weights, sites):
    """The server before the fix: E[w²] − E[w]², clamped at 0."""
    mean_d = weighted_mean([(m, n) for m, _, n in sites])
    sq_d = weighted_mean([(s, n) for _, s, n in sites])
    variance = {}
    for name, d in mean_d.items():
        w = global_weights[name].astype(np.float64)
        first = w + d.astype(np.float64)
        variance[name] = np.maximum(w**2 + sq_d[name].astype(np.float64) - first**2, 0.0)
    return variance


def filtered(part, steps: int, percentile: float, gamma: float):
    """One part of a site's result after the site's PercentilePrivacy (its own threshold, per-step gamma)."""
    out, _ = percentile_filter({k: v.copy() for k, v in part.items()}, percentile, gamma, num_steps=steps)
    return out


def relative_errors(variance, reference):
    errors = {}
    for name, ref in reference.items():
        std_ref = np.sqrt(np.asarray(ref, dtype=np.float64))
        std = np.sqrt(np.asarray(variance[name], dtype=np.float64))
        errors[name] = float(np.linalg.norm(std - std_ref) / max(np.linalg.norm(std_ref), 1e-30))
    return errors


def measure(swag_epochs: int = 3, global_epochs: int = 5, percentile: float = 10, gamma: float = 0.01):
    """Per scheme: the per-layer relative error of the SWAG std and the share of weights with zero variance."""
    return compare(*snapshots_per_site(site_data(), swag_epochs, global_epochs), percentile, gamma)


def compare(global_weights, sites, percentile: float, gamma: float):
    """``measure`` on snapshots already taken (snapshots_per_site)."""
    floats = {k: v for k, v in global_weights.items() if v.dtype.kind == "f"}
    new = {s: swag.site_moments(shots, floats) + (steps, n) for s, (shots, steps, n) in sites.items()}
    old = {s: legacy_moments(shots, floats) + (steps, n) for s, (shots, steps, n) in sites.items()}
    _, reference = swag.aggregate(floats, [(m, d, n) for m, d, _, n in new.values()])
    _, after = swag.aggregate(
        floats,
        [(filtered(m, st, percentile, gamma), filtered(d, st, percentile, gamma), n) for m, d, st, n in new.values()],
    )
    before = legacy_aggregate(
        floats,
        [(filtered(m, st, percentile, gamma), filtered(q, st, percentile, gamma), n) for m, q, st, n in old.values()],
    )
    results = {}
    for scheme, variance in (("moments", before), ("deviation", after)):
        total = sum(v.size for v in variance.values())
        zero = sum(int(np.sum(np.asarray(v) == 0)) for v in variance.values())
        results[scheme] = (relative_errors(variance, reference), zero / total)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swag-epochs", type=int, default=3)
    parser.add_argument("--global-epochs", type=int, default=5)
    parser.add_argument(
        "--setting",
        action="append",
        default=None,
        metavar="PERCENTILE:GAMMA",
        help="filter settings to measure (repeatable); default 10:0.01 25:0.001 50:0.01 50:0.001",
    )
    args = parser.parse_args(argv)
    settings = [tuple(float(v) for v in s.split(":")) for s in args.setting or DEFAULT_SETTINGS]
    snapshots = snapshots_per_site(site_data(), args.swag_epochs, args.global_epochs)
    for percentile, gamma in settings:
        results = compare(*snapshots, percentile, gamma)
        for scheme, (errors, zero) in results.items():
            layers = ",".join(f"{layer}:{error:.3f}" for layer, error in errors.items())
            print(
                f"swag_filter percentile={percentile:g} gamma={gamma:g} scheme={scheme} "
                f"max_rel_error_std={max(errors.values()):.3f} zero_variance={zero:.3f} layers={layers}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
