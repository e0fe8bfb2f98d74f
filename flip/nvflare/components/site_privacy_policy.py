"""SitePrivacyPolicy: a hospital's differential-privacy policy, which no job can weaken, and its budget ledger."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from nvflare.apis.client_engine_spec import ClientEngineSpec
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

from flip.checks import check_choice, check_path_name
from flip.constants import ComponentId, FlipEvent, FlipMeta
from flip.errors import FlipError, PrivacyError, TaskFailed
from flip.nvflare.components.client_event_handler import leaving_norm, site_error_message
from flip.nvflare.components.percentile_privacy import annotate
from flip.nvflare.result_policy import is_training_task
from flip.nvflare.utils import short_reason, workspace_root
from flip.privacy.automatic import AutomaticDP, epochs_per_round
from flip.privacy.dp_sgd import CLIENT_LEVEL, LEVELS, RECORD_LEVEL, DPSession, RecordLevelPolicy
from flip.privacy.ledger import PrivacyLedger, ledger_path
from flip.privacy.release import release_meta, release_metrics

#: the name GaussianPrivacy's records carry (the client-level filter a client-level policy requires)
CLIENT_LEVEL_FILTER = "GaussianPrivacy"
#: the accountant GaussianPrivacy uses (dp-accounting's RDP accountant)
CLIENT_LEVEL_ACCOUNTANT = "rdp"


class TrainingTask:
    """One training task under the policy: the runner sets ``ok`` False when the task failed."""

    def __init__(self):
        self.ok = True


#: the policy whose training task is running in this thread (set by SitePrivacyPolicy.training): what
#: ``flip.utils.make_private`` uses when the caller has no FLContext (a MONAI ClientAlgo)
_TRAINING: ContextVar[SitePrivacyPolicy | None] = ContextVar("flip_site_privacy_training", default=None)


def site_policy(fl_ctx: FLContext | None) -> SitePrivacyPolicy | None:
    """The site's privacy policy in force for this job (component ``flip_site_privacy``), or None; without an
    FLContext, the policy of the training task running in this thread, or None."""
    if fl_ctx is None:
        return _TRAINING.get()
    engine = fl_ctx.get_engine() if fl_ctx is not None else None
    get_component = getattr(engine, "get_component", None)  # an engine without components: no policy
    policy = get_component(ComponentId.SITE_PRIVACY) if callable(get_component) else None
    return policy if isinstance(policy, SitePrivacyPolicy) and policy.active else None


class SitePrivacyPolicy(FLComponent):
    """A site's differential-privacy policy: declared in the site's own ``local/privacy.json`` (its
    ``"components"``, id ``flip_site_privacy``), so it applies to every job the site runs and no job can weaken it.

    ``level="record"`` (default): **record-level DP-SGD**. Every training task must train through Opacus with the
    site's settings: the runner admits the job against the site's ledger, then the trainer's model, optimizer and
    data loader go through ``make_private`` (our plain contract: the runner does it around the unchanged
    ``train``, :meth:`automatic`, unless the trainer calls ``ctx.make_private``; FLIP's contracts:
    ``flip.utils.make_private(model, optimizer, data_loader, fl_ctx)``); a training result the trainer did not
    make private is refused (nothing leaves). The noise is calibrated once per job for the job's planned steps at
    ``target_epsilon``; one accountant counts every round; a step beyond the plan is not taken.

    ``level="client"``: client-level DP. Every training result must have passed ``GaussianPrivacy`` with a budget
    (``max_epsilon``) of at most ``target_epsilon`` and δ at most ``delta``; otherwise it is refused.

    At either level, whatever the job does:

    - **the budget is the site's**: a job is admitted at its first training task only if the data set has
      ``target_epsilon`` left of ``total_epsilon`` in the site's ledger (``<workspace>/local/privacy_ledger.json``,
      flip.privacy.ledger), else its task fails naming what is left; what it spends is recorded every round;
    - **nothing leaves around the filter**: after every filter ran (NVFlare's AFTER_TASK_RESULT_FILTER, where this
      component is the last handler), a training result carries only the numbers flip.privacy.release allows
      (``update_norm`` of the update as it leaves, ``received_checksum``, a public weight as ``num_samples``), and
      this site's federated events (FLIP's ``send_metrics_value``, any other) are withheld: only a failure's short
      reason reaches the server;
    - **the guarantee is named**: the update's privacy record says the level, ε so far, δ and the accountant.

    A second policy declared by a job (any other id) makes every training task fail: the policy is the site's.

    Args:
        level: ``record`` or ``client``. Default ``record``.
        target_epsilon: ε one job may spend on a data set at this site (> 0). Required.
        delta: δ (0 < δ < 1). Default 1e-5.
        max_grad_norm: DP-SGD's bound on one record's gradient (> 0). Default 1.0.
        accountant: ``rdp`` (default) or ``prv`` (Opacus's accountants; record level).
        total_epsilon: the site's budget for one data set across jobs (>= target_epsilon). Default target_epsilon.
        dataset: the ledger key every job is charged to; None: a FLIP app's project id, else ``default``.
        public_sample_weight: the public weight of this site's updates (an integer >= 1); None: for DP-SGD the
            batches per epoch × batch size, for client level 1.
        epsilon: FLIP's name (its LocalDifferentialPrivacy's) for ``target_epsilon``; give one, or both equal.

    Raises:
        ValueError: a bad argument (named).
    """

    def __init__(
        self,
        level: str = RECORD_LEVEL,
        target_epsilon: float | None = None,
        delta: float = 1e-5,
        max_grad_norm: float = 1.0,
        accountant: str = "rdp",
        total_epsilon: float | None = None,
        dataset: str | None = None,
        public_sample_weight: int | None = None,
        epsilon: float | None = None,
    ):
        super().__init__()
        self.level = check_choice("level", level, LEVELS)
        if epsilon is not None and target_epsilon is not None and epsilon != target_epsilon:
            raise ValueError(
                f"target_epsilon {target_epsilon!r} and FLIP's epsilon {epsilon!r} name one setting: give "
                "one, or both equal"
            )
        target_epsilon = target_epsilon if target_epsilon is not None else epsilon
        if target_epsilon is None:
            raise ValueError("target_epsilon is required: the ε one job may spend on a data set at this site")
        self.policy = RecordLevelPolicy(
            target_epsilon=target_epsilon,
            delta=delta,
            max_grad_norm=max_grad_norm,
            accountant=accountant,
            total_epsilon=total_epsilon,
            dataset=dataset,
            public_sample_weight=public_sample_weight,
        )
        self._reset()

    def _reset(self) -> None:
        self.active = False  # this component is the site's policy in this job, at a site
        self.refused: str | None = None  # why every training task fails (a second policy...)
        self.ledger: PrivacyLedger | None = None
        self.session: DPSession | None = None
        self.dataset: str | None = None
        self.job_id = ""
        self.trained = False  # a training task made private since the last release
        self.spent = 0.0  # ε recorded in the ledger for this job
        self._withheld: set[str] = set()

    def describe(self) -> str:
        p = self.policy
        what = (
            f"record-level DP-SGD (max_grad_norm {p.max_grad_norm:g}, {p.accountant} accountant)"
            if self.level == RECORD_LEVEL
            else f"client-level DP ({CLIENT_LEVEL_FILTER} required)"
        )
        return f"{what}, ε={p.target_epsilon:g} per job (total {p.budget:g} per data set), δ={p.delta:g}"

    # -- events --------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif not self.active:
            return
        elif event_type == EventType.AFTER_TASK_RESULT_FILTER:
            self._release(fl_ctx)
        elif event_type == EventType.END_RUN:
            self._end(fl_ctx)
        elif self._outgoing_fed_event(event_type, fl_ctx):
            self._withhold_event(event_type, fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        self._reset()
        engine = fl_ctx.get_engine()
        if not isinstance(engine, ClientEngineSpec):
            return  # a server reading the same local/ folder (the simulator copies it everywhere): nothing to do
        self.active = True
        self.job_id = fl_ctx.get_job_id()
        components = getattr(engine, "get_all_components", dict)() or {}
        mine = [cid for cid, comp in components.items() if comp is self]
        others = [cid for cid, comp in components.items() if isinstance(comp, SitePrivacyPolicy) and comp is not self]
        if mine and mine[0] != ComponentId.SITE_PRIVACY:
            self.refused = (
                f"a SitePrivacyPolicy with id {mine[0]!r}: the site's policy is declared in its "
                f"local/privacy.json with id {ComponentId.SITE_PRIVACY!r}, never by a job"
            )
        elif others:
            self.refused = (
                f"the job declares its own SitePrivacyPolicy ({', '.join(map(repr, others))}): the privacy "
                "policy is the site's"
            )
        self.ledger = PrivacyLedger(ledger_path(workspace_root(fl_ctx)), site=fl_ctx.get_identity_name())
        self.log_info(
            fl_ctx,
            f"site privacy policy: {self.describe()}; ledger {self.ledger.path}"
            + (f"; REFUSING this job: {self.refused}" if self.refused else ""),
        )

    def _end(self, fl_ctx: FLContext) -> None:
        if self.dataset is None or self.ledger is None:
            return
        spent = self.session.epsilon() if self.session is not None else self.spent
        try:
            budget = self.ledger.spend(self.dataset, self.job_id, max(spent, self.spent), done=True)
        except FlipError as exc:
            self.log_error(fl_ctx, f"privacy ledger not updated at the end of the job: {short_reason(exc)}")
            return
        self.log_info(
            fl_ctx,
            f"privacy ledger: this job spent ε={max(spent, self.spent):.4g} on data set "
            f"{self.dataset!r}; {budget.remaining:.4g} of {budget.total_epsilon:g} left",
        )

    # -- the runner's calls (RUN_TRAINER, and make_private for the user's code) ------------------------------
    @contextmanager
    def training(self, fl_ctx: FLContext, project_id: str, total_rounds: int) -> Iterator[TrainingTask]:
        """Around one training task: admit the job (first time), count the round, remove Opacus's hooks after,
        and, when the task succeeded (the caller leaves ``task.ok`` True), require that it trained privately and
        record what it spent.

        Raises:
            TaskFailed: the job is refused (a second policy, the budget: the reason names what is left), or the
                trainer did not train through make_private (record level).
        """
        if self.refused:
            raise TaskFailed(f"privacy policy: {self.refused}")
        self._admit(fl_ctx, project_id, total_rounds)
        if self.session is not None:
            self.session.begin_round()
        task = TrainingTask()
        token = _TRAINING.set(self)
        try:
            yield task
        except BaseException:
            task.ok = False
            raise
        finally:
            _TRAINING.reset(token)
            spend = self.session.end_round() if self.session is not None else None
        if task.ok:
            if spend is not None:
                self._after_round(fl_ctx, spend)
            else:
                self.trained = True

    def _admit(self, fl_ctx: FLContext, project_id: str, total_rounds: int) -> None:
        if self.dataset is not None:
            return
        key = self.policy.dataset or project_id or "default"
        try:
            key = check_path_name("data set", key)
        except ValueError as exc:
            raise TaskFailed(
                f"privacy policy: the job's project id cannot name a data set in the ledger ({exc}); "
                "set the policy's dataset"
            ) from exc
        try:
            budget = self.ledger.admit(
                key,
                self.job_id,
                self.policy.target_epsilon,
                self.policy.delta,
                self.policy.budget,
                self.accountant,
                level=self.level,
            )
        except PrivacyError as exc:
            raise TaskFailed(str(exc)) from exc
        self.dataset = key
        if self.level == RECORD_LEVEL:
            self.session = DPSession(self.policy, total_rounds=max(1, int(total_rounds)))
        self.log_info(
            fl_ctx,
            f"privacy ledger: job admitted to spend ε={self.policy.target_epsilon:g} on data set "
            f"{key!r}; {budget.remaining:.4g} of {budget.total_epsilon:g} left after it",
        )

    @property
    def accountant(self) -> str:
        return self.policy.accountant if self.level == RECORD_LEVEL else CLIENT_LEVEL_ACCOUNTANT

    def make_private(self, model, optimizer, data_loader, epochs: int = 1, fl_ctx: FLContext | None = None):
        """The user's training made private for this round (record level); unchanged at client level.

        Raises:
            PrivacyError: outside a training task, or what DPSession.make_private refuses (a layer, the loader).
        """
        if self.level != RECORD_LEVEL:
            return model, optimizer, data_loader
        if self.session is None:
            raise PrivacyError("make_private is called by a trainer during a training task")
        log = (lambda line: self.log_info(fl_ctx, line)) if fl_ctx is not None else None
        return self.session.make_private(model, optimizer, data_loader, epochs=epochs, log=log)

    def automatic(self, model, config: dict, stage: str | None, trainer: Any, fl_ctx: FLContext):
        """Around a plain trainer's ``train(model, ctx)``: the runner's DP-SGD for a trainer that does not call
        make_private (flip.privacy.automatic), calibrated for the epochs per round in the job's config.json
        (``LOCAL_ROUNDS``); None at client level.

        Raises:
            PrivacyError: the epochs per round in config.json are not a positive integer (named).
        """
        if self.level != RECORD_LEVEL or self.session is None:
            return None
        epochs, source = epochs_per_round(config, stage, trainer)
        log = functools.partial(self.log_info, fl_ctx)
        if self.session.noise_multiplier is None:
            log(f"DP-SGD: {epochs} epochs per round ({source}), unless the trainer calls make_private itself")
        return AutomaticDP(self.session, model, epochs, log=log)

    def _after_round(self, fl_ctx: FLContext, spend) -> None:
        if self.session.private_calls == 0:
            raise TaskFailed(
                "privacy policy: this site trains with record-level DP-SGD, but the trainer did not "
                "pass its model, optimizer and data loader through make_private (ctx.make_private, or "
                "flip.utils.make_private(model, optimizer, data_loader, fl_ctx)), nor train the model it was "
                "given from a torch DataLoader (the runner's DP-SGD): nothing was sent"
            )
        self.trained = True
        if spend.skipped:
            self.log_warning(
                fl_ctx,
                f"DP-SGD: {spend.skipped} steps were not taken: the job's planned steps are "
                "spent (declare the epochs per round to make_private)",
            )
        self.log_info(
            fl_ctx,
            f"DP-SGD round: {spend.steps} steps, ε={spend.epsilon:.4g} of "
            f"{self.session.epsilon_target:g} at δ={self.policy.delta:g} after {spend.total_steps} "
            f"steps ({self.policy.accountant}); next round would reach {spend.next_epsilon:.4g}",
        )
        self._spend(fl_ctx, spend.epsilon)

    def _spend(self, fl_ctx: FLContext, epsilon: float) -> None:
        try:
            self.ledger.spend(self.dataset, self.job_id, epsilon)
            self.spent = max(self.spent, epsilon)
        except FlipError as exc:
            raise TaskFailed(f"privacy ledger not updated: {short_reason(exc)}; nothing was sent") from exc

    # -- what leaves ---------------------------------------------------------------------------------------
    def _release(self, fl_ctx: FLContext) -> None:
        """The last word on a training result as it leaves (see the class docstring)."""
        reply = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME)
        if not isinstance(reply, Shareable) or reply.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return  # an error reply: headers only (the result policy of our filters checks it)
        if not is_training_task(task):
            return  # scores of a model the server sent, or nothing
        try:
            self._release_update(fl_ctx, reply)
        except (PrivacyError, ValueError, TypeError, KeyError) as exc:
            self._refuse(fl_ctx, reply, f"privacy policy refused the {task} result: {short_reason(exc)}")

    def _release_update(self, fl_ctx: FLContext, reply: Shareable) -> None:
        dxo = from_shareable(reply)
        if dxo.data_kind not in (DataKind.WEIGHT_DIFF, DataKind.COLLECTION):
            raise PrivacyError(f"a training result must be a model difference, got {dxo.data_kind}")
        if not self.trained:
            raise PrivacyError(
                "this training result was not trained under the site's DP policy (the job's executor "
                "did not train through flip's RUN_TRAINER and make_private)"
            )
        if self.level == RECORD_LEVEL:
            record = self.session.record()
            weight = self.session.public_sample_weight() or 1
            keep_steps = True
        else:
            record = self._client_record(dxo)
            weight = self.policy.public_sample_weight or 1
            keep_steps = False
            self._spend(fl_ctx, record["epsilon"])
        norm = leaving_norm(dxo)
        metrics, withheld = release_metrics(reply.get_header(FlipMeta.METRICS), weight, norm)
        reply.set_header(FlipMeta.METRICS, metrics)
        meta, dropped = release_meta(dxo.meta, weight, keep_steps)
        dxo.meta.clear()
        dxo.meta.update(meta)
        annotate(dxo, {"filter": type(self).__name__, "site_policy": True, **record})
        dxo.update_shareable(reply)
        self.trained = False
        shown = f"; withheld {', '.join(withheld)}" if withheld else ""
        shown += f"; meta dropped {', '.join(dropped)}" if dropped else ""
        self.log_info(
            fl_ctx,
            f"released under {record['level']}-level DP: ε={record['epsilon']:.4g} at "
            f"δ={record['delta']:g} ({record['accountant']}), update norm {norm:.4g}, weight "
            f"{weight}{shown}",
        )

    def _client_record(self, dxo: DXO) -> dict[str, Any]:
        applied = dxo.get_meta_prop(FlipMeta.PRIVACY)
        applied = applied if isinstance(applied, list) else []
        found = [r for r in applied if isinstance(r, dict) and r.get("filter") == CLIENT_LEVEL_FILTER]
        if not found:
            raise PrivacyError(f"this site requires client-level DP: the update did not pass {CLIENT_LEVEL_FILTER}")
        record = found[-1]
        budget, delta, epsilon = record.get("max_epsilon"), record.get("delta"), record.get("epsilon")
        if not isinstance(budget, (int, float)) or budget > self.policy.target_epsilon:
            raise PrivacyError(
                f"the job's {CLIENT_LEVEL_FILTER} allows ε up to {budget!r}; this site allows at most "
                f"{self.policy.target_epsilon:g}"
            )
        if not isinstance(delta, (int, float)) or delta > self.policy.delta:
            raise PrivacyError(
                f"the job's {CLIENT_LEVEL_FILTER} has δ={delta!r}; this site allows at most {self.policy.delta:g}"
            )
        return {
            "level": CLIENT_LEVEL,
            "epsilon": float(epsilon),
            "delta": float(delta),
            "accountant": CLIENT_LEVEL_ACCOUNTANT,
            "max_epsilon": float(budget),
        }

    def _refuse(self, fl_ctx: FLContext, reply: Shareable, reason: str) -> None:
        """Make ``reply`` an error carrying only ``reason`` (in place: NVFlare sends this very object)."""
        for key in [k for k in reply if k != ReservedHeaderKey.HEADERS]:
            del reply[key]
        headers = reply.get(ReservedHeaderKey.HEADERS)
        if isinstance(headers, dict):
            headers.pop(FlipMeta.METRICS, None)
        reply.set_return_code(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(FlipMeta.ERROR_REASON, short_reason(reason))
        self.log_error(fl_ctx, reason)
        self.fire_fed_event(FlipEvent.SITE_ERROR, site_error_message(fl_ctx.get_identity_name(), reason), fl_ctx)

    # -- federated events ----------------------------------------------------------------------------------
    @staticmethod
    def _outgoing_fed_event(event_type: str, fl_ctx: FLContext) -> bool:
        if event_type == FlipEvent.SITE_ERROR:
            return False
        if fl_ctx.get_prop(FLContextKey.EVENT_SCOPE) != EventScope.FEDERATION:
            return False
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        return not (isinstance(data, Shareable) and data.get_header(FedEventHeader.DIRECTION, "out") != "out")

    def _withhold_event(self, event_type: str, fl_ctx: FLContext) -> None:
        """Keep an outgoing federated event at the site: its data is emptied (headers only) and marked incoming,
        which NVFlare's federated-event forwarder (a widget, after every component) does not send. The scope cannot
        be changed: NVFlare's dispatcher resets it for every handler; the data is one object for all of them."""
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        for key in [k for k in data if k != ReservedHeaderKey.HEADERS]:
            del data[key]
        data.set_header(FedEventHeader.DIRECTION, "in")
        if event_type not in self._withheld:
            self._withheld.add(event_type)
            self.log_info(
                fl_ctx,
                f"event {event_type!r} withheld: under the site's DP policy only a training result "
                "(and a failure's reason) leaves the site",
            )
