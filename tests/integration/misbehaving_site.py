"""A misbehaving site's trainer (test code placed in that site's custom/ folder; no privacy filter there).

Round 1: an update with NaN; round 2: a parameter of the wrong shape; round 3: num_samples 0; round 4: a
correct update that arrives too late (after the round closed); later rounds: correct updates.
"""

import time

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.app_common.app_constant import AppConstants

#: Round 4 closes WAIT_AFTER_MIN_CLIENTS s after the two good sites answered, so this update is late if they take
#: under LATE_SECONDS - WAIT_AFTER_MIN_CLIENTS (5 s, room for a loaded 2-core machine); round 5 stays open until
#: this site answers, since the good sites' round 5 ends at least WAIT_AFTER_MIN_CLIENTS after round 4 did.
WAIT_AFTER_MIN_CLIENTS = 6
LATE_SECONDS = 2 * WAIT_AFTER_MIN_CLIENTS - 1


class MisbehavingTrainer(Executor):
    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        round_num = shareable.get_header(AppConstants.CURRENT_ROUND, 0)
        weights = from_shareable(shareable).data
        names = [k for k, v in weights.items() if np.asarray(v).dtype.kind == "f"]
        diff = {k: np.full_like(np.asarray(weights[k]), 0.001) for k in names}
        samples = 100
        if round_num == 0:
            diff[names[0]][...] = np.nan
        elif round_num == 1:
            diff[names[0]] = np.zeros((3, 3), np.float32)
        elif round_num == 2:
            samples = 0
        elif round_num == 3:
            time.sleep(LATE_SECONDS)
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: 1, "flip_num_samples": samples}
        return DXO(DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()
