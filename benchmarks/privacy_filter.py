"""PercentilePrivacy vs NVFlare's built-in PercentilePrivacy, side by side in one run.

For updates of 1M, 10M and 50M float32 parameters in a CNN-like mix of layer sizes: the time (min of
``--repeats``) of ours (flip.privacy.percentile_filter, in place on the DXO's arrays, as the filter runs) and of
NVFlare's built-in filter on the same update, and the peak extra memory of each relative to the update's size
(measured in a fresh process with tracemalloc, which sees every numpy buffer and Python object both filters
allocate; the resident-set peak is not used because freed heap pages are reused without growing it).

Last line: ``privacy_filter params=50000000 ratio_vs_nvflare=<ours/theirs> extra_memory_vs_update=<x>``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

SIZES = (1_000_000, 10_000_000, 50_000_000)
_MIB = 1024 * 1024


def make_update(n_params: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A CNN-like update of exactly ``n_params`` float32 values: conv kernels, biases, norms, a classifier."""
    rng = np.random.default_rng(seed)
    update: dict[str, np.ndarray] = {}
    remaining = n_params
    channels = [32, 64, 128, 256, 512, 512, 1024]
    block = 0
    while remaining > 0:
        c_in = channels[block % len(channels)]
        c_out = channels[min(block + 1, len(channels) - 1) % len(channels)]
        for name, shape in (
            (f"block{block}.conv.weight", (c_out, c_in, 3, 3)),
            (f"block{block}.conv.bias", (c_out,)),
            (f"block{block}.norm.weight", (c_out,)),
            (f"block{block}.norm.bias", (c_out,)),
        ):
            size = int(np.prod(shape))
            if size >= remaining:
                shape, size = (remaining,), remaining
            array = np.empty(shape, dtype=np.float32)
            flat = array.reshape(-1)
            for start in range(0, size, 1 << 22):  # fill in place: no temporary bigger than 16 MiB
                stop = min(size, start + (1 << 22))
                flat[start:stop] = rng.standard_normal(stop - start, dtype=np.float32) * np.float32(0.01)
            update[name] = array
            remaining -= size
            if remaining == 0:
                break
        block += 1
    return update


def _ours(update):
    from flip.privacy.percentile import percentile_filter

    return percentile_filter(update, 10, 0.01, num_steps=1, inplace=True)


def _nvflare(update):
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

    return PercentilePrivacy(percentile=10, gamma=0.01).process_dxo(
        DXO(DataKind.WEIGHT_DIFF, data=update), Shareable(), FLContext()
    )


def _gaussian(update):
    from flip.privacy.gaussian import clip_and_noise, make_rng

    return clip_and_noise(update, clip_norm=1.0, noise_multiplier=1.0, rng=make_rng())


IMPLEMENTATIONS = {"ours": _ours, "nvflare": _nvflare, "gaussian": _gaussian}


def measure_memory(impl: str, n_params: int) -> float:
    """In this (fresh) process: peak memory ``impl`` allocates beyond the update / update size."""
    import logging
    import tracemalloc

    logging.disable(logging.CRITICAL)
    IMPLEMENTATIONS[impl](make_update(1000))  # import and warm up before measuring
    update = make_update(n_params)
    nbytes = sum(a.nbytes for a in update.values())
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    IMPLEMENTATIONS[impl](update)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return max(0, peak - before) / nbytes


def time_impl(impl: str, update: dict[str, np.ndarray], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        fresh = {k: v.copy() for k, v in update.items()}
        gc.collect()
        started = time.perf_counter()
        IMPLEMENTATIONS[impl](fresh)
        best = min(best, time.perf_counter() - started)
        del fresh
    return best


def memory_in_subprocess(impl: str, n_params: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory", impl, str(n_params)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["extra"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    parser.add_argument("--memory", nargs=2, metavar=("IMPL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps({"extra": measure_memory(args.memory[0], int(args.memory[1]))}))
        return

    import logging

    logging.disable(logging.CRITICAL)
    print(f"torch threads: {__import__('torch').get_num_threads()}, cpus: {os.cpu_count()}, repeats: {args.repeats}")
    print(f"{'params':>10} {'MiB':>6} {'ours s':>8} {'nvflare s':>9} {'ratio':>6} {'ours mem':>8} {'nvflare mem':>11}")
    last = None
    for n in args.sizes:
        update = make_update(n)
        for impl in IMPLEMENTATIONS:  # warm-up
            IMPLEMENTATIONS[impl]({k: v.copy() for k, v in make_update(1000).items()})
        ours = time_impl("ours", update, args.repeats)
        theirs = time_impl("nvflare", update, args.repeats)
        gaussian = time_impl("gaussian", update, args.repeats) if n == args.sizes[-1] else None
        del update
        gc.collect()
        mem_ours = memory_in_subprocess("ours", n)
        mem_theirs = memory_in_subprocess("nvflare", n)
        print(
            f"{n:>10} {n * 4 / _MIB:>6.0f} {ours:>8.3f} {theirs:>9.3f} {ours / theirs:>6.2f} {mem_ours:>8.2f} {mem_theirs:>11.2f}",
            flush=True,
        )
        last = (n, ours / theirs, mem_ours, gaussian, ours)
    n, ratio, mem, gaussian, ours = last
    print(f"gaussian_privacy params={n} seconds={gaussian:.3f} ratio_vs_percentile={gaussian / ours:.2f}")
    print(f"privacy_filter params={n} ratio_vs_nvflare={ratio:.3f} extra_memory_vs_update={mem:.3f}")


if __name__ == "__main__":
    main()
