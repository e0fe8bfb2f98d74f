"""A late site's trainer (test code placed in that site's custom/ folder; no privacy filter there).

Round 1: a correct update in time; round 2: a correct update that arrives too late (after the round closed); later
rounds: correct updates in time. (Updates that are wrong in themselves, NaN, a wrong shape, num_samples 0, are
refused by the aggregator: tests/unit/test_server_run.py.)
"""

import time

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.app_common.app_constant import AppConstants

#: Round 2 closes WAIT_AFTER_MIN_CLIENTS s after the two good sites answered, so this update is late if they take
#: under LATE_SECONDS - WAIT_AFTER_MIN_CLIENTS (5 s, room for a loaded 2-core machine); round 3 stays open until
#: this site answers, since the good sites' round 3 ends at least WAIT_AFTER_MIN_CLIENTS after round 2 did.
WAIT_AFTER_MIN_CLIENTS = 6
LATE_SECONDS = 2 * WAIT_AFTER_MIN_CLIENTS - 1
LATE_ROUND = 1  # 0-based: round 2


class LateTrainer(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        round_num = shareable.get_header(AppConstants.CURRENT_ROUND, 0)
        weights = from_shareable(shareable).data
        diff = {k: np.full_like(np.asarray(v), 0.001) for k, v in weights.items() if np.asarray(v).dtype.kind == "f"}
        if round_num == LATE_ROUND:
            time.sleep(LATE_SECONDS)
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 1, "flip_num_samples": 100}
        return DXO(DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
