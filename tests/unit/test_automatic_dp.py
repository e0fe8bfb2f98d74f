"""The runner's DP-SGD for a plain trainer that does not call make_private (flip.privacy.automatic): the same
training, noise and accounting as ``ctx.make_private``, with the user's code unchanged; what it cannot make private
is refused before the weights move.

Real Opacus and torch training; the trainers here are ordinary PyTorch loops."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from flip.errors import PrivacyError
from flip.privacy.automatic import AutomaticDP, epochs_per_round
from flip.privacy.dp_sgd import DPSession, RecordLevelPolicy

pytestmark = pytest.mark.unit

RECORDS, BATCH = 200, 20


def _data(seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(RECORDS, 8, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def _session(epsilon: float = 3.0, rounds: int = 2, seed: int = 1) -> DPSession:
    return DPSession(RecordLevelPolicy(target_epsilon=epsilon), total_rounds=rounds, seed=seed)


def plain_train(model, epochs: int = 1, optimizer=None, validate: bool = False) -> int:
    """A researcher's loop with no DP in it: its own optimizer, a shuffled DataLoader, its own validation."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    loader = DataLoader(_data(), batch_size=BATCH, shuffle=True)
    steps = 0
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            steps += 1
        if validate:
            model.eval()
            seen = sum(len(y) for _, y in DataLoader(_data(1), batch_size=50))
            assert seen == RECORDS  # the trainer's own validation data: every record, in its batches
    return steps


def _explicit_round(session: DPSession, model, optimizer) -> None:
    """The same round with ``ctx.make_private`` (what a trainer wrote before the runner did it)."""
    session.begin_round()
    model, private_optimizer, loader = session.make_private(model, optimizer, DataLoader(_data(), BATCH))
    for x, y in loader:
        private_optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        private_optimizer.step()
    session.end_round()


def test_an_unchanged_trainer_trains_exactly_as_make_private_would():
    """Same seeds: the runner's DP-SGD gives the very weights, steps, noise and ε of the explicit make_private."""
    automatic, explicit = _session(), _session()
    auto_model, explicit_model = _model(), _model()
    for _ in range(2):
        automatic.begin_round()
        with AutomaticDP(automatic, auto_model, epochs=1):
            steps = plain_train(auto_model, optimizer=torch.optim.SGD(auto_model.parameters(), lr=0.3, momentum=0.9))
        spend = automatic.end_round()
        _explicit_round(explicit, explicit_model, torch.optim.SGD(explicit_model.parameters(), lr=0.3, momentum=0.9))
        assert steps == spend.steps == RECORDS // BATCH and spend.skipped == 0
    assert automatic.history == explicit.history and automatic.noise_multiplier == explicit.noise_multiplier
    assert 2.9 < automatic.epsilon() <= 3.0
    for name, value in explicit_model.state_dict().items():
        assert torch.equal(auto_model.state_dict()[name], value), name
    # and it is not the training without DP: the noise moved the weights elsewhere
    plain = _model()
    plain_train(plain, epochs=2)
    assert not torch.allclose(plain.state_dict()["0.weight"], auto_model.state_dict()["0.weight"])


def test_the_runner_restores_torch_after_the_task():
    original = DataLoader.__iter__
    session = _session()
    session.begin_round()
    model = _model()
    with AutomaticDP(session, model, epochs=1):
        assert DataLoader.__iter__ is not original
        plain_train(model)
    session.end_round()
    assert DataLoader.__iter__ is original
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps = plain_train(model)  # no session: plain torch again (no noise, no accounting, every batch in order)
    assert steps == RECORDS // BATCH and session.steps == RECORDS // BATCH
    assert not torch.equal(before["0.weight"], model.state_dict()["0.weight"])


def test_validation_in_eval_mode_and_other_threads_are_left_as_they_are():
    session = _session()
    session.begin_round()
    model = _model()
    seen_elsewhere = []

    def other_thread():  # e.g. another component's loader while the site trains
        seen_elsewhere.append(sum(len(y) for _, y in DataLoader(_data(), batch_size=BATCH)))

    with AutomaticDP(session, model, epochs=2):
        plain_train(model, epochs=2, validate=True)
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
    spend = session.end_round()
    assert seen_elsewhere == [RECORDS] and spend.steps == 2 * (RECORDS // BATCH)


def test_a_trainer_calling_make_private_itself_is_left_to_it():
    """Inside the runner's session, a trainer's own make_private: one DP-SGD (not noise twice, not steps twice)."""
    inside, alone = _session(), _session()
    in_model, alone_model = _model(), _model()
    inside.begin_round()
    with AutomaticDP(inside, in_model, epochs=1):
        _explicit_round_body(inside, in_model)
    inside.end_round()
    alone.begin_round()
    _explicit_round_body(alone, alone_model)
    alone.end_round()
    assert inside.steps == alone.steps == RECORDS // BATCH and inside.history == alone.history
    assert torch.equal(in_model.state_dict()["2.weight"], alone_model.state_dict()["2.weight"])


def _explicit_round_body(session, model):
    model, optimizer, loader = session.make_private(
        model, torch.optim.SGD(model.parameters(), lr=0.3), DataLoader(_data(), BATCH)
    )
    for x, y in loader:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_an_optimizer_kept_across_rounds_is_made_private_every_round():
    session = _session()
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)  # built once, as a trainer may cache it
    for _ in range(2):
        session.begin_round()
        with AutomaticDP(session, model, epochs=1):
            plain_train(model, optimizer=optimizer)
        assert session.end_round().steps == RECORDS // BATCH
    assert session.steps == 2 * (RECORDS // BATCH) and session.epsilon() <= 3.0


def test_steps_beyond_the_planned_ones_are_not_taken():
    """The config said 1 epoch per round, the trainer runs 3: the extra steps move nothing, the ε holds."""
    session = _session(epsilon=2.0, rounds=1)
    session.begin_round()
    model = _model()
    with AutomaticDP(session, model, epochs=1):
        plain_train(model, epochs=1)
        after_plan = {k: v.clone() for k, v in model.state_dict().items()}
        plain_train(model, epochs=2)
    spend = session.end_round()
    assert spend.steps == RECORDS // BATCH and spend.skipped == 2 * (RECORDS // BATCH)
    assert session.epsilon() <= 2.0
    assert all(torch.equal(after_plan[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "loop, message",
    [
        ("tensors", "this step followed no such batch"),
        ("other_loader", "not the training data"),
        ("closure", r"optimizer.step\(closure\) cannot be made private by the runner"),
    ],
)
def test_what_the_runner_cannot_make_private_is_refused_before_the_weights_move(loop, message):
    session = _session()
    session.begin_round()
    model = _model()
    x, y = _data().tensors
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    with AutomaticDP(session, model, epochs=1):
        if loop != "tensors":
            plain_train(model)  # a first, private epoch
        before = {k: v.clone() for k, v in model.state_dict().items()}
        if loop == "other_loader":  # batches of another size: not the data the noise was calibrated for
            x, y = next(iter(DataLoader(_data(), batch_size=7)))

        def loss():
            optimizer.zero_grad()
            value = torch.nn.functional.cross_entropy(model(x), y)
            value.backward()
            return value

        with pytest.raises(PrivacyError, match=message):
            if loop == "closure":
                next(iter(DataLoader(_data(), batch_size=BATCH)))
                optimizer.step(loss)
            else:
                loss()
                optimizer.step()
    session.end_round()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_epochs_per_round_come_from_flips_config_names():
    class FlipTrainer:
        def get_num_epochs(self):
            return 4

    assert epochs_per_round({"LOCAL_ROUNDS": 3}) == (3, "config.json LOCAL_ROUNDS")
    assert epochs_per_round({"LOCAL_ROUNDS": 3, "LOCAL_ROUNDS_AE": 5}, stage="ae") == (5, "config.json LOCAL_ROUNDS_AE")
    assert epochs_per_round({"LOCAL_ROUNDS": 3}, stage="dm") == (3, "config.json LOCAL_ROUNDS")
    assert epochs_per_round({}, trainer=FlipTrainer()) == (4, "the trainer's get_num_epochs()")
    assert epochs_per_round({}) == (1, "no LOCAL_ROUNDS in config.json")
    for bad in (0, "2", 1.5, True):
        with pytest.raises(PrivacyError, match=rf"config.json LOCAL_ROUNDS is {bad!r}: DP-SGD needs the epochs"):
            epochs_per_round({"LOCAL_ROUNDS": bad})


def test_the_standard_jobs_unchanged_trainer_trains_privately_at_a_record_level_site(tmp_path, monkeypatch):
    """jobs/standard's trainer (no make_private in it) run by RUN_TRAINER at a site whose own policy asks for
    record-level DP: trained with DP-SGD for config.json's LOCAL_ROUNDS epochs, released with its ε."""
    import json
    import shutil
    from pathlib import Path

    import numpy as np
    from nvflare.apis.dxo import DXO, DataKind, from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_constant import FLContextKey, ReturnCode
    from nvflare.apis.signal import Signal
    from nvflare.app_common.app_constant import AppConstants

    from flip.constants import ComponentId, FlipMeta, FlipTask
    from flip.demo.data import write_cohorts
    from flip.nvflare.components import ClientEventHandler, SitePrivacyPolicy
    from flip.nvflare.executors import RUN_TRAINER
    from flip.nvflare.executors.user_code import build_model
    from tests import flip_runtime_apps as apps
    from tests.conftest import REPO
    from tests.unit.test_record_dp import SiteEngine, _ctx

    monkeypatch.setenv("FLIP_LOCAL_DIR", str(tmp_path / "flip"))
    write_cohorts(tmp_path / "flip", ["site-1"])
    policy = SitePrivacyPolicy(target_epsilon=4.0)
    engine = SiteEngine(
        tmp_path / "site-1", {"client_event_handler": ClientEventHandler(), ComponentId.SITE_PRIVACY: policy}
    )
    custom = Path(engine.workspace.get_app_custom_dir("job-1"))
    shutil.copytree(REPO / "jobs" / "standard" / "app" / "custom", custom)
    assert "make_private" not in (custom / "trainer.py").read_text()
    epochs = json.loads((custom / "config.json").read_text())["LOCAL_ROUNDS"]
    apps.forget_app_modules()
    ctx = _ctx(engine)
    engine.fire(EventType.START_RUN, ctx)
    try:
        model = build_model(custom)
        task = DXO(DataKind.WEIGHTS, data={k: v.numpy().copy() for k, v in model.state_dict().items()}).to_shareable()
        task.set_header(AppConstants.CURRENT_ROUND, 0)
        task.set_header(AppConstants.NUM_ROUNDS, 3)
        reply = RUN_TRAINER().execute(FlipTask.TRAIN, task, ctx, Signal())
    finally:
        apps.forget_app_modules()
    assert reply.get_return_code(ReturnCode.OK) == ReturnCode.OK, reply.get_header(FlipMeta.ERROR_REASON)
    session = policy.session
    assert session.automatic and session.steps == epochs * session.batches_per_epoch > 0
    assert session.planned_steps == 3 * session.steps  # calibrated for the job's 3 rounds of LOCAL_ROUNDS epochs
    ctx.set_prop(FLContextKey.TASK_RESULT, reply, private=True, sticky=False)
    engine.fire(EventType.AFTER_TASK_EXECUTION, ctx)
    engine.fire(EventType.AFTER_TASK_RESULT_FILTER, ctx)
    released = from_shareable(reply)
    record = released.meta[FlipMeta.PRIVACY][-1]
    assert record["level"] == "record" and record["steps"] == session.steps and 0 < record["epsilon"] < 4.0
    assert set(reply.get_header(FlipMeta.METRICS)) == {"update_norm", "num_samples"}  # loss, accuracy withheld
    assert any(np.any(v) for v in released.data.values())


def test_a_model_dp_sgd_cannot_train_is_refused_before_the_trainer_runs():
    from flip.errors import DPModelError

    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2))
    called = []
    with pytest.raises(DPModelError, match=r"layer '1' \(BatchNorm1d\).*flip.privacy.fix_model"):
        with AutomaticDP(_session(), model, epochs=1):
            called.append(True)
    assert not called and DataLoader.__iter__.__name__ == "__iter__"


@pytest.mark.parametrize("how", ["trained_copy_loaded_back", "hand_written_update"])
def test_weights_moved_other_than_by_a_dp_step_are_refused(how):
    """A trainer that moves the model without an intercepted step (a copy trained without DP and loaded back, a
    hand-written update) is refused when train() returns: nothing it trained can be released."""
    session = _session()
    session.begin_round()
    model = _model()
    with pytest.raises(PrivacyError, match="weights changed other than by a DP-SGD step"):
        with AutomaticDP(session, model, epochs=1):
            next(iter(DataLoader(_data(), batch_size=BATCH)))  # the runner engaged
            if how == "trained_copy_loaded_back":
                twin = _model()  # a net of its own, trained without DP
                for x, y in [_data().tensors]:
                    torch.nn.functional.cross_entropy(twin(x), y).backward()
                with torch.no_grad():
                    for p in twin.parameters():
                        p -= 0.5 * p.grad
                model.load_state_dict(twin.state_dict())
            else:
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(0.01)
    session.end_round()
    assert session.steps == 0


def test_a_step_computed_on_other_data_than_the_drawn_batch_is_refused():
    """A loss on every record after drawing one sampled batch would be accounted at the sampling rate: refused."""
    session = _session()
    session.begin_round()
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    x, y = _data().tensors
    with AutomaticDP(session, model, epochs=1):
        batch = next(iter(DataLoader(_data(), batch_size=BATCH)))
        assert len(batch[0]) != len(y)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        with pytest.raises(PrivacyError, match=r"gradients are not of the \d+ records of the batch"):
            optimizer.step()
    session.end_round()
    assert session.steps == 0


def test_a_trainer_that_looks_at_its_loader_first_may_still_call_make_private():
    session = _session()
    session.begin_round()
    model = _model()
    with AutomaticDP(session, model, epochs=1):
        loader = DataLoader(_data(), batch_size=BATCH)
        next(iter(loader))  # a look at one batch (the runner engages on it)
        model, optimizer, loader = session.make_private(model, torch.optim.SGD(model.parameters(), lr=0.3), loader)
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert session.end_round().steps == RECORDS // BATCH and session.private_calls == 1
