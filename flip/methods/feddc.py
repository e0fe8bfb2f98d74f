"""FedDC's daisy chain: between aggregations, local models move from site to site (plain Python).

Kamp et al., "Federated Learning from Small Datasets", ICLR 2023: every ``daisy_chain_period`` rounds the local
models are averaged; in the rounds between, each site continues training another site's local model, following
a permutation the server draws from a seeded generator.

Rounds are counted as the DLR demonstrator counts them: the number of rounds asked for is the number of
aggregations, and the run trains that many times the daisy-chain period (DLR: ``target_num_updates ×
daisy_chain_period``).
"""

from __future__ import annotations

import numpy as np


def training_rounds(num_rounds: int, period: int) -> int:
    """The training rounds of a FedDC run of ``num_rounds`` aggregations, one every ``period`` rounds (DLR's count)."""
    return num_rounds * period


def is_aggregation_round(round_num: int, period: int, num_rounds: int) -> bool:
    """Whether 0-based ``round_num`` ends with an aggregation: every ``period`` rounds, and always the last."""
    return (round_num + 1) % period == 0 or round_num == num_rounds - 1


def daisy_chain(sites: list[str], seed: int, round_num: int) -> dict[str, str]:
    """Who continues whose model after 0-based ``round_num``: {receiver: site whose local model it gets}.

    A seeded permutation with no site receiving its own model back (for two or more sites).
    """
    order = sorted(sites)
    if len(order) < 2:
        return {s: s for s in order}
    rng = np.random.default_rng([seed, round_num])
    while True:
        perm = rng.permutation(len(order))
        if all(perm[i] != i for i in range(len(order))):
            return {order[i]: order[int(perm[i])] for i in range(len(order))}
