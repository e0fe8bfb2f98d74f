"""Record-level DP-SGD for a trainer that does not ask for it: the runner makes the training private around the
user's ``train(model, ctx)`` (our plain contract) with no change to the user's code.

While :class:`AutomaticDP` is active (one training task, in the thread that runs it):

- the first ``torch.utils.data.DataLoader`` iterated while the model is in training mode is the training data: the
  job's noise is calibrated for it (rounds × epochs per round × its batches, at the first round), Opacus's
  per-record gradient hooks are attached to the model, and it yields Poisson-sampled batches of its records (the
  sampling the accounting assumes) instead of its own. Every later training-mode DataLoader with as many batches
  is drawn the same way; one with another number of batches is left as it is (it is not the training data);
- the first ``optimizer.step()`` over the model's parameters wraps that optimizer in Opacus's ``DPOptimizer``: before
  each step the gradient becomes the clipped, noised sum of the batch's per-record gradients, counted by the job's
  accountant (a step beyond the planned ones is not taken), and the user's optimizer moves the weights with it;
- a step must follow a batch drawn that way, and its per-record gradients must be of that batch's records: a step
  after a batch from elsewhere (or none), or computed on other data, raises :class:`~flip.errors.PrivacyError` before
  the weights move;
- the model's weights move by those steps only: weights changed otherwise (another model trained and loaded back,
  a hand-written update, training in another thread) are refused at the next step and when ``train`` returns.

DataLoaders iterated with the model in eval mode (the trainer's own validation) are left as they are. A trainer that
calls ``ctx.make_private`` itself is left to it. What the automatic mode cannot see (a loss computed on data that did
not come from a DataLoader, ``optimizer.step(closure)``) is refused rather than guessed.

The interception is the one public hook torch offers for optimizers (``register_optimizer_step_pre_hook``) and, for
the data, ``DataLoader.__iter__`` replaced on the class while any session is active (restored after the last);
both act only in the thread a session was entered in. No NVFlare import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from flip.errors import PrivacyError
from flip.privacy.dp_sgd import check_model

#: the config.json keys FLIP's apps read as the epochs a site trains per round (a stage's own first)
EPOCH_KEYS = ("LOCAL_ROUNDS",)

_LOCK = threading.Lock()
_ACTIVE: dict[int, AutomaticDP] = {}  # thread id -> the session active in it
_INSTALLED: dict[str, Any] = {}  # the hooks installed while any session is active
_ORIGINAL_ITER = DataLoader.__iter__  # torch's own, put back when the last session ends


def epochs_per_round(config: dict, stage: str | None = None, trainer: Any = None) -> tuple[int, str]:
    """The epochs the trainer runs per round, and where that number came from: ``config.json``'s
    ``LOCAL_ROUNDS_<STAGE>`` (a multi-stage job) or ``LOCAL_ROUNDS`` (FLIP's name), else the trainer's
    ``get_num_epochs()`` (FLIP's trainers), else 1.

    Raises:
        PrivacyError: the value found is not a positive integer (naming the key and the value).
    """
    keys = ([f"{key}_{stage.upper()}" for key in EPOCH_KEYS] if stage else []) + list(EPOCH_KEYS)
    for key in keys:
        if key in config:
            return _positive(config[key], f"config.json {key}"), f"config.json {key}"
    method = getattr(trainer, "get_num_epochs", None)
    if callable(method):
        return _positive(method(), "the trainer's get_num_epochs()"), "the trainer's get_num_epochs()"
    return 1, "no LOCAL_ROUNDS in config.json"


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PrivacyError(f"{where} is {value!r}: DP-SGD needs the epochs per round as a positive integer")
    return value


def _dispatch_iter(loader: DataLoader):
    session = _ACTIVE.get(threading.get_ident())
    if session is None:
        return _ORIGINAL_ITER(loader)
    return session.iterate(loader)


def _dispatch_pre_step(optimizer, args, kwargs):
    session = _ACTIVE.get(threading.get_ident())
    if session is not None:
        session.before_step(optimizer, args, kwargs)


def _dispatch_post_step(optimizer, args, kwargs):
    session = _ACTIVE.get(threading.get_ident())
    if session is not None:
        session.after_step(optimizer)


def _install() -> None:
    """Route DataLoader iteration and optimizer steps through the active sessions (first session only)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    DataLoader.__iter__ = _dispatch_iter
    _INSTALLED["pre"] = register_optimizer_step_pre_hook(_dispatch_pre_step)
    _INSTALLED["post"] = register_optimizer_step_post_hook(_dispatch_post_step)


def _uninstall() -> None:
    DataLoader.__iter__ = _ORIGINAL_ITER
    _INSTALLED.pop("pre").remove()
    _INSTALLED.pop("post").remove()


def _batch_size(batch: Any) -> int | None:
    """The records in a batch: the first dimension of its first tensor (None: no tensor in it)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    items = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for item in items:
        size = _batch_size(item)
        if size is not None:
            return size
    return None


class _Batches:
    """An iterator over a DataLoader's batches that tells the session where each batch came from."""

    def __init__(self, inner: Iterator, session: AutomaticDP, private: bool):
        self.inner, self.session, self.private = inner, session, private

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.inner)
        self.session.last_batch = self.private
        self.session.last_batch_size = _batch_size(batch)
        return batch

    def __len__(self) -> int:
        return len(self.inner)


class AutomaticDP:
    """One training task's DP-SGD made by the runner around the user's code (a context manager).

    Raises (on entering):
        DPModelError: the model has a layer DP-SGD cannot train (named, with the fix), before any training.

    Args:
        session: the job's :class:`~flip.privacy.dp_sgd.DPSession` (its round begun).
        model: the model the runner gives the trainer.
        epochs: the epochs per round the noise is calibrated for at the job's first round (see
            :func:`epochs_per_round`); steps beyond the job's planned ones are not taken.
        log: called with what was set (one line).
    """

    def __init__(self, session, model: torch.nn.Module, epochs: int, log: Callable[[str], None] | None = None):
        self.session, self.model, self.epochs, self.log = session, model, epochs, log
        self.records = 0  # the training data's records (the DataLoader that engaged the session)
        self.last_batch: bool | None = None  # True: a private batch was drawn since the last step; False: another
        self.last_batch_size: int | None = None
        self._weights: list[torch.Tensor] = []  # the parameters as the last DP step (or the runner) left them
        self._optimizers: dict[int, Any] = {}  # id(user's optimizer) -> its DPOptimizer, this task
        self._owned: set = set()  # the model's parameters (taken on entering)
        self._thread: int | None = None

    def __enter__(self) -> AutomaticDP:
        check_model(self.model)  # a layer DP-SGD cannot train is refused before the user's code runs
        thread = threading.get_ident()
        with _LOCK:
            if thread in _ACTIVE:
                raise PrivacyError("a training task is already made private in this thread")
            if not _ACTIVE:
                _install()
            _ACTIVE[thread] = self
        self._thread = thread
        self._owned = set(self.model.parameters())
        self._keep_weights()
        self.model.train()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        with _LOCK:
            _ACTIVE.pop(self._thread, None)
            if not _ACTIVE:
                _uninstall()
        for private in self._optimizers.values():
            self._drop_samples(private)
        self._optimizers.clear()
        if exc_type is None and not self.explicit:
            self._check_weights("after the trainer returned")
        self._weights = []

    # -- the weights move by DP steps only -------------------------------------------------------------------
    def _keep_weights(self) -> None:
        self._weights = [p.detach().clone() for p in self.model.parameters()]

    def _check_weights(self, when: str) -> None:
        """Refuse weights that changed other than by a DP-SGD step (a copy trained and loaded back, a hand-written
        update, training in another thread)."""
        with torch.no_grad():
            moved = any(not torch.equal(p, kept) for p, kept in zip(self.model.parameters(), self._weights))
        if moved:
            raise PrivacyError(
                f"the model's weights changed other than by a DP-SGD step ({when}): under the site's record-level DP "
                "policy the model given to train() moves only by optimizer.step() on batches of its training "
                "DataLoader (not by load_state_dict of another model, a hand-written update or another thread)"
            )

    @property
    def engaged(self) -> bool:
        """This round's training data was found: the runner made the training private."""
        return self.session.automatic

    @property
    def explicit(self) -> bool:
        """The trainer called make_private itself this round (before any step, it may take over from the runner):
        Opacus's objects do everything, nothing to add."""
        return self.session.private_calls > 0 and not self.session.automatic

    # -- the data --------------------------------------------------------------------------------------------
    def iterate(self, loader: DataLoader):
        from opacus.data_loader import DPDataLoader

        original = _ORIGINAL_ITER
        if isinstance(loader, DPDataLoader) or self.explicit or not self.model.training:
            return original(loader)
        if not self.engaged:
            self.session.prepare(loader, self.epochs, self.log)
            self.session.attach(self.model)
            self.records = len(loader.dataset)
            self.session.private_calls += 1
            self.session.automatic = True
            if self.log:
                self.log(
                    f"DP-SGD made by the runner (the trainer did not call make_private): the training data is the "
                    f"DataLoader of {len(loader)} batches over {len(loader.dataset)} records, iterated with the "
                    "model in training mode; its batches are Poisson-sampled"
                )
        elif len(loader) != self.session.batches_per_epoch:
            return _Batches(original(loader), self, private=False)
        return _Batches(original(self.session.poisson(loader)), self, private=True)

    # -- the steps -------------------------------------------------------------------------------------------
    def before_step(self, optimizer, args, kwargs) -> None:
        if self.explicit:
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not any(p in self._owned for p in params):
            return  # an optimizer of something else (the model moved by it is caught by the weights check)
        closure = args[1] if len(args) > 1 else kwargs.get("closure")  # args[0] is the optimizer
        if closure is not None:
            raise PrivacyError(
                "optimizer.step(closure) cannot be made private by the runner: call ctx.make_private(model, "
                "optimizer, data_loader) and step without a closure"
            )
        if not self.engaged or self.last_batch is None:
            raise PrivacyError(
                "under the site's record-level DP policy every optimizer step trains on a batch of a torch "
                "DataLoader iterated with the model in training mode (the runner draws its batches for DP-SGD); "
                "this step followed no such batch"
            )
        self._check_weights("before this step")
        if self.last_batch is False:
            raise PrivacyError(
                "this optimizer step followed a batch of a DataLoader that is not the training data (not "
                f"{self.session.batches_per_epoch} batches per epoch): DP-SGD steps on the training data only"
            )
        expected, self.last_batch, self.last_batch_size = self.last_batch_size, None, None
        samples = [p.grad_sample for p in params if getattr(p, "grad_sample", None) is not None]
        if expected is not None and any((s[-1] if isinstance(s, list) else s).shape[0] != expected for s in samples):
            raise PrivacyError(
                f"this optimizer step's gradients are not of the {expected} records of the batch drawn before it: "
                "under the site's record-level DP policy every step trains on the batch the runner drew"
            )
        private = self._optimizers.get(id(optimizer))
        if private is None:
            private = self.session.private_optimizer(optimizer, self.model, self.records)
            self._optimizers[id(optimizer)] = private
        if not private.pre_step():
            for p in private.params:  # not taken (beyond the planned steps): the user's step moves nothing
                p.grad = None

    def after_step(self, optimizer) -> None:
        private = self._optimizers.get(id(optimizer))
        if private is not None:
            self._drop_samples(private)
            self._keep_weights()

    @staticmethod
    def _drop_samples(private) -> None:
        """What Opacus's zero_grad does, which the user's own optimizer's does not: forget the batch's per-record
        gradients."""
        for p in private.params:
            p.grad_sample = None
            p.summed_grad = None
