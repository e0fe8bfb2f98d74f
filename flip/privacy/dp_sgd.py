"""Record-level (ε, δ) differential privacy at a site: DP-SGD with Opacus, accounted over every round of a job.

DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016) clips each patient's (record's)
gradient to L2 norm ``max_grad_norm``, adds Gaussian noise of standard deviation ``noise_multiplier ×
max_grad_norm`` to the sum of a batch, and draws batches by Poisson sampling (each record joins a batch with
probability q = 1 / batches per epoch). Every model the site releases is then (ε, δ)-DP with respect to adding or
removing one record of its training data. Opacus (``PrivacyEngine``) does the per-sample gradients, the clipping,
the noise and the sampling; its accountant (RDP by default, PRV on request) turns the steps into ε at δ.

:class:`DPSession` is one job at one site. Its noise multiplier is calibrated once, at the first
:meth:`DPSession.make_private`, so that every step the job plans (rounds × epochs × batches per epoch) spends at
most the job's ε; one accountant counts every step of every round, so the ε after round k is the ε of all the
steps so far. A step beyond the planned ones is not taken (the optimizer skips it, the count says so), so the job
never spends more than its ε.

Randomness: the noise and the Poisson sampling draw from ``torch.Generator`` objects seeded from the operating
system's cryptographic randomness, never from torch's global generator (user code seeds that, e.g. with
``torch.manual_seed(0)`` in ``get_model()``). Opacus's ``secure_mode`` (a cryptographic generator for every draw,
``torchcsprng``) is not used: it is not installed here.

No NVFlare import.
"""

from __future__ import annotations

import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from flip.checks import check_choice, check_int, check_number, check_path_name, check_positive, optional
from flip.errors import BudgetRefused, DPModelError, PrivacyError  # noqa: F401 - re-exported

#: the accountants Opacus offers that a site may choose (``gdp`` is an approximation, not an upper bound)
ACCOUNTANTS = ("rdp", "prv")
#: how a privacy record names the guarantee of an ε
RECORD_LEVEL, CLIENT_LEVEL = "record", "client"
LEVELS = (RECORD_LEVEL, CLIENT_LEVEL)
#: ``flip.privacy.fix_model``: Opacus's fix, named where a model is refused
FIX_HINT = (
    "make get_model() return flip.privacy.fix_model(model) (Opacus's ModuleValidator.fix: e.g. BatchNorm "
    "becomes GroupNorm), so that the server and every site build the same model"
)


def check_delta(name: str, value: Any) -> float:
    """Return δ if it is a finite number in (0, 1)."""
    return check_number(name, value, 0, 1, low_open=True, high_open=True)


@dataclass(frozen=True)
class RecordLevelPolicy:
    """What a site's privacy policy sets for record-level DP-SGD (checked on construction).

    Args:
        target_epsilon: the ε one job may spend on a data set at this site (> 0).
        delta: δ of the guarantee, in (0, 1). Default 1e-5 (below 1 / records, as it should be).
        max_grad_norm: the L2 bound of one record's gradient (> 0). Default 1.0.
        accountant: ``rdp`` (default: Rényi DP, an upper bound) or ``prv`` (tighter, slower).
        total_epsilon: the site's budget for one data set across every job (>= target_epsilon). Default:
            ``target_epsilon`` (one job's worth).
        dataset: the ledger key every job is charged to (a name); None: a FLIP app's ``project_id``, else
            ``default``.
        public_sample_weight: the weight the site declares public for its updates (an integer >= 1); None: the
            number the sampling already makes public (batches per epoch × batch size).

    Raises:
        ValueError: a value out of range (named).
    """

    target_epsilon: float
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    total_epsilon: float | None = None
    dataset: str | None = None
    public_sample_weight: int | None = None

    def __post_init__(self):
        check_positive("target_epsilon", self.target_epsilon)
        check_delta("delta", self.delta)
        check_positive("max_grad_norm", self.max_grad_norm)
        check_choice("accountant", self.accountant, ACCOUNTANTS)
        if (
            self.total_epsilon is not None
            and not check_positive("total_epsilon", self.total_epsilon) >= self.target_epsilon
        ):
            raise ValueError(
                f"total_epsilon must be >= target_epsilon ({self.target_epsilon:g}), got {self.total_epsilon!r}"
            )
        optional(check_path_name, "dataset", self.dataset)
        optional(check_int, "public_sample_weight", self.public_sample_weight, 1)

    @property
    def budget(self) -> float:
        """The site's total ε for one data set."""
        return self.total_epsilon if self.total_epsilon is not None else self.target_epsilon


def fix_model(model: torch.nn.Module) -> torch.nn.Module:
    """Return a copy of ``model`` that DP-SGD can train: Opacus's ``ModuleValidator.fix`` (BatchNorm → GroupNorm,
    ...). Call it in ``get_model()`` so that the server and every site build the same model."""
    from opacus.validators import ModuleValidator

    return ModuleValidator.fix(model)


def unsupported_layers(model: torch.nn.Module) -> list[str]:
    """Each trainable layer Opacus cannot train privately, as ``'<name>' (<type>): <Opacus's reason>``."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems = []
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        for error in validator(module) if validator else []:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            problems.append(f"{name or 'the model'!r} ({type(module).__name__}): {reason}")
    return problems


def check_model(model: torch.nn.Module) -> None:
    """Refuse a model DP-SGD cannot train.

    Raises:
        DPModelError: naming the first layer, how many there are, and the fix (:func:`fix_model`).
    """
    if not isinstance(model, torch.nn.Module):
        raise DPModelError(f"make_private needs the torch.nn.Module being trained, got a {type(model).__name__}")
    problems = unsupported_layers(model)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DPModelError(f"the model cannot be trained with DP-SGD: layer {problems[0]}{more}; {FIX_HINT}")


def os_generator() -> torch.Generator:
    """A torch generator seeded from the operating system's cryptographic randomness."""
    return torch.Generator().manual_seed(secrets.randbits(63))


def accountant_epsilon(mechanism: str, history: list[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` of an Opacus accountant of ``mechanism`` whose history is ``[(noise, sample_rate, steps)]``."""
    from opacus.accountants import create_accountant

    if not history or sum(steps for *_, steps in history) == 0:
        return 0.0
    accountant = create_accountant(mechanism=mechanism)
    accountant.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RDP's "optimal order is the largest alpha": still an upper bound
        return float(accountant.get_epsilon(delta=delta))


def calibrate_noise(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """The noise multiplier at which ``steps`` Poisson-sampled steps at ``sample_rate`` spend at most ``epsilon``
    (Opacus's ``get_noise_multiplier``, within 0.01 below ``epsilon``).

    Raises:
        PrivacyError: no noise multiplier up to Opacus's limit reaches ``epsilon`` (naming the four values).
    """
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(
                get_noise_multiplier(
                    target_epsilon=epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                )
            )
    except ValueError as exc:
        raise PrivacyError(
            f"ε={epsilon:g} at δ={delta:g} cannot be reached over {steps} steps at sample rate "
            f"{sample_rate:.4g}: the budget is too small for that much training ({exc})"
        ) from exc


@dataclass(frozen=True)
class RoundSpend:
    """What one round of DP-SGD spent at a site."""

    steps: int  # optimizer steps taken this round (accounted)
    skipped: int  # steps not taken: they would have gone beyond the job's planned steps
    total_steps: int  # steps of the job so far
    epsilon: float  # ε of every step of the job so far, at the policy's δ
    next_epsilon: float  # ε after one more round of as many steps


class DPSession:
    """One job's DP-SGD at one site: one noise multiplier for the whole job, one accountant over every round.

    Args:
        policy: the site's record-level policy.
        epsilon: the ε this job may spend (the site's ``target_epsilon``; at most it).
        total_rounds: the rounds the job plans (the task's ``NUM_ROUNDS``), >= 1.
        seed: for tests only: seed the noise and sampling generators (production draws from the OS).
    """

    def __init__(
        self, policy: RecordLevelPolicy, epsilon: float | None = None, total_rounds: int = 1, seed: int | None = None
    ):
        self.policy = policy
        self.epsilon_target = check_positive("epsilon", epsilon if epsilon is not None else policy.target_epsilon)
        if self.epsilon_target > policy.target_epsilon:
            raise PrivacyError(
                f"epsilon {self.epsilon_target:g} is more than the site's target_epsilon {policy.target_epsilon:g}"
            )
        self.total_rounds = check_int("total_rounds", total_rounds, 1)
        self._seed = seed
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.batches_per_epoch: int | None = None
        self.batch_size: int | None = None
        self.planned_steps: int | None = None
        self.steps = 0  # every step taken (and accounted) in this job
        self.round_steps = 0
        self.round_skipped = 0
        self.private_calls = 0  # make_private calls this round (or the runner's, flip.privacy.automatic)
        self.automatic = False  # this round's training was made private by the runner (flip.privacy.automatic)
        self._accountant = None
        self._engine = None
        self._hooks: list[Any] = []
        #: called after each step's noise is added, before the parameters move: data-independent gradient terms
        #: (FedProx's proximal term), post-processing of the private gradient
        self.after_noise: list[Callable[[], None]] = []

    # -- randomness ----------------------------------------------------------------------------------------
    def _generator(self, offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(self._seed + offset) if self._seed is not None else os_generator()

    # -- accounting ----------------------------------------------------------------------------------------
    @property
    def history(self) -> list[tuple[float, float, int]]:
        """The accountant's history: ``[(noise_multiplier, sample_rate, steps)]``."""
        return list(self._accountant.history) if self._accountant is not None else []

    def epsilon(self) -> float:
        """ε of every step taken so far, at the policy's δ (0 before the first step)."""
        return accountant_epsilon(self.policy.accountant, self.history, self.policy.delta)

    def epsilon_after(self, more_steps: int) -> float:
        """ε if ``more_steps`` steps followed the ones taken."""
        if self.noise_multiplier is None:
            return 0.0
        extra = [(self.noise_multiplier, self.sample_rate, more_steps)] if more_steps > 0 else []
        return accountant_epsilon(self.policy.accountant, self.history + extra, self.policy.delta)

    # -- a round -------------------------------------------------------------------------------------------
    def begin_round(self) -> None:
        """Start counting a new round's steps."""
        self.round_steps = self.round_skipped = self.private_calls = 0
        self.automatic = False

    def make_private(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader,
        epochs: int = 1,
        log: Callable[[str], None] | None = None,
    ):
        """Return ``(model, optimizer, data_loader)`` made private with Opacus for this round.

        ``model`` is returned as it is, put in training mode (Opacus's hooks are attached to it and removed at
        :meth:`end_round`); the optimizer clips each record's gradient, adds the noise and counts each step; the
        data loader draws its batches by Poisson sampling. At the job's first call the noise multiplier is
        calibrated for ``total_rounds × epochs × len(data_loader)`` steps at the job's ε.

        Args:
            model: the module being trained (its parameters are the optimizer's).
            optimizer: a ``torch.optim.Optimizer`` over the model's parameters.
            data_loader: a ``torch.utils.data.DataLoader`` over the site's training records (one record per
                sample), with a ``batch_size``.
            epochs: passes over the data loader this round (>= 1); the noise is calibrated for it.
            log: called with one line saying what was set (default: nothing).

        Raises:
            DPModelError: the model has a layer DP-SGD cannot train (named, with the fix).
            PrivacyError: the data loader is not a DataLoader with batches, or its batches per epoch differ from
                the first round's (the noise was calibrated for them), or the ε cannot be reached, or the runner
                already taken a private step this round (:mod:`flip.privacy.automatic`).
        """
        if self.automatic:
            if self.round_steps or self.round_skipped:
                raise PrivacyError(
                    "make_private was called after this round's first training step: the runner had already made "
                    "the training private; call make_private before training, or not at all"
                )
            for hooks in self._hooks:  # the runner engaged on an early look at the loader: the trainer takes over
                hooks.cleanup()
            self._hooks.clear()
            self.automatic, self.private_calls = False, 0
        check_model(model)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise PrivacyError(f"make_private needs a torch.optim.Optimizer, got a {type(optimizer).__name__}")
        self.prepare(data_loader, epochs, log)
        self.attach(model)
        private_optimizer = self.private_optimizer(optimizer, model, len(data_loader.dataset))
        self.private_calls += 1
        return model, private_optimizer, self.poisson(data_loader)

    # -- the pieces (make_private and flip.privacy.automatic) ------------------------------------------------
    def prepare(self, data_loader, epochs: int, log: Callable[[str], None] | None = None) -> int:
        """Check ``data_loader``; at the job's first call calibrate the noise for ``epochs`` passes over it per
        round. Returns its batches per epoch.

        Raises:
            PrivacyError: not a DataLoader with batches; batches per epoch unlike the calibrated ones; an ε that
                cannot be reached.
        """
        from opacus.accountants import create_accountant
        from opacus.data_loader import DPDataLoader
        from torch.utils.data import DataLoader

        check_int("epochs", epochs, 1)
        if not isinstance(data_loader, DataLoader) or isinstance(data_loader, DPDataLoader):
            raise PrivacyError(
                f"make_private needs the torch DataLoader of the training records, got a {type(data_loader).__name__}"
            )
        batches = len(data_loader)
        if batches < 1:
            raise PrivacyError("make_private got a DataLoader without batches")
        if self.noise_multiplier is None:
            self.batches_per_epoch = batches
            self.sample_rate = 1 / batches
            self.batch_size = int(data_loader.batch_size or max(1, round(len(data_loader.dataset) / batches)))
            self.planned_steps = self.total_rounds * epochs * batches
            self.noise_multiplier = calibrate_noise(
                self.epsilon_target, self.policy.delta, self.sample_rate, self.planned_steps, self.policy.accountant
            )
            self._accountant = create_accountant(mechanism=self.policy.accountant)
            if log:
                log(
                    f"DP-SGD: noise multiplier {self.noise_multiplier:.4g} for ε={self.epsilon_target:g} at "
                    f"δ={self.policy.delta:g} over {self.planned_steps} steps ({self.total_rounds} rounds × {epochs} "
                    f"epochs × {batches} batches, sample rate {self.sample_rate:.4g}), max_grad_norm "
                    f"{self.policy.max_grad_norm:g}, {self.policy.accountant} accountant"
                )
        elif batches != self.batches_per_epoch:
            raise PrivacyError(
                f"the data loader has {batches} batches per epoch; it had {self.batches_per_epoch} when "
                "the noise was calibrated for this job: keep the data set and batch size of the first "
                "round"
            )
        return batches

    def attach(self, model: torch.nn.Module) -> None:
        """Put ``model`` (checked by the caller: :func:`check_model`) in training mode and attach Opacus's per-record
        gradient hooks to it (removed at :meth:`end_round`); a second accumulation of per-record gradients before a
        step is refused by Opacus.

        Raises:
            PrivacyError: hooks already attached this round.
        """
        from opacus.grad_sample import GradSampleHooks

        model.train()  # Opacus attaches its hooks to a model in training mode (a trainer's last round left it in eval)
        try:
            hooks = GradSampleHooks(model, batch_first=True, loss_reduction="mean")
        except ValueError as exc:  # e.g. hooks added twice
            raise PrivacyError(f"Opacus cannot make this training private: {exc}") from exc
        hooks.forbid_grad_accumulation()  # one batch, one step: the accounting counts each step once
        self._hooks.append(hooks)

    def private_optimizer(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module, records: int):
        """Opacus's DPOptimizer around ``optimizer`` (whose parameters must be ``model``'s) for a data set of
        ``records``: the site's clipping and noise (the clipped sum divided by the expected batch size), this job's
        accountant, and the guard that counts each step and skips any beyond the plan.

        Raises:
            PrivacyError: the optimizer steps parameters that are not the model's.
        """
        from opacus.optimizers import DPOptimizer

        owned = set(model.parameters())
        if any(p not in owned for group in optimizer.param_groups for p in group["params"]):
            raise PrivacyError(
                "Opacus cannot make this training private: the optimizer's parameters are not all the model's"
            )
        private = DPOptimizer(
            optimizer,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.policy.max_grad_norm,
            expected_batch_size=int(records * self.sample_rate),
            loss_reduction="mean",
            generator=self._generator(2 * self.steps + 2),
        )
        private.attach_step_hook(self._accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        self._guard(private)
        return private

    def poisson(self, data_loader):
        """``data_loader``'s records drawn in Poisson-sampled batches (rate 1 / batches per epoch) from a generator
        seeded by the operating system."""
        from opacus.data_loader import DPDataLoader

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DPDataLoader.from_data_loader(data_loader, generator=self._generator(2 * self.steps + 1))

    def _guard(self, optimizer) -> None:
        """Make ``optimizer`` count its steps and skip any beyond the planned ones (the budget is never passed)."""
        original = optimizer.pre_step

        def pre_step(closure=None):
            if self.steps >= self.planned_steps:
                self.round_skipped += 1
                for p in optimizer.params:  # the batch's per-record gradients are dropped, never used
                    p.grad_sample = None
                    p.summed_grad = None
                return False
            taken = original(closure)
            if taken:
                self.steps += 1
                self.round_steps += 1
                for add_term in self.after_noise:
                    add_term()
            return taken

        optimizer.pre_step = pre_step

    def end_round(self) -> RoundSpend:
        """Remove this round's hooks from the model and say what the round spent."""
        for hooks in self._hooks:
            hooks.cleanup()
        self._hooks.clear()
        return RoundSpend(
            steps=self.round_steps,
            skipped=self.round_skipped,
            total_steps=self.steps,
            epsilon=self.epsilon(),
            next_epsilon=self.epsilon_after(max(self.round_steps, 1)),
        )

    def public_sample_weight(self) -> int | None:
        """The weight of this site's update that reveals nothing the mechanism does not: the policy's, else the
        batches per epoch × batch size (what the sampling rate already makes public); None before any call."""
        if self.policy.public_sample_weight is not None:
            return self.policy.public_sample_weight
        if self.batches_per_epoch is None:
            return None
        return self.batches_per_epoch * self.batch_size

    def record(self) -> dict[str, Any]:
        """What a privacy record on the update says of this session (settings and counts: never data)."""
        spent = self.epsilon()
        return {
            "level": RECORD_LEVEL,
            "epsilon": round(spent, 6),
            "delta": self.policy.delta,
            "accountant": self.policy.accountant,
            "max_grad_norm": self.policy.max_grad_norm,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
            "max_epsilon": self.epsilon_target,
            "next_epsilon": round(self.epsilon_after(max(self.round_steps, 1)), 6),
        }
