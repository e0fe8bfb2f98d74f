"""ServerEventHandler: the run's status lifecycle; it feeds the sites' metrics to RunMetrics and ends the run in a
fixed order (flip.nvflare.end_of_run)."""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType

from flip import FLIP, site_messages
from flip.checks import check_component_id, check_model_id
from flip.constants import ComponentId, FlipEvent, FlipEvents, FlipMeta, FlipProp, FLLogEvent, RunFile, RunStatus
from flip.errors import FlipError, LookupFailed, MetricDropped, SiteMessageError, StatusNotDelivered
from flip.metrics import format_metrics
from flip.nvflare.components.persist_to_s3_and_cleanup import PersistToS3AndCleanup
from flip.nvflare.components.validation_json_generator import ValidationJsonGenerator
from flip.nvflare.end_of_run import finish_run
from flip.nvflare.metrics import parse_metric_event
from flip.nvflare.utils import get_component, new_run_id, peer_name, run_dir, short_reason
from flip.run_metrics import RunMetrics

#: what a failed result's return code means, when the site sent no reason of its own
_RC_REASONS = {
    ReturnCode.TASK_RESULT_FILTER_ERROR: "its privacy filter refused the update (nothing was sent)",
    ReturnCode.TASK_DATA_FILTER_ERROR: "a task data filter failed",
    ReturnCode.TASK_UNKNOWN: "the site has no executor for the task",
}

#: statuses in the order they may be reported; a final status ends the lifecycle
_ORDER = [RunStatus.INITIATED, RunStatus.PREPARED, RunStatus.TRAINING_STARTED]


class ServerEventHandler(FLComponent):
    """Own the run's status lifecycle and end the run in a fixed order.

    Statuses (each reported once, in order): INITIATED at START_RUN; PREPARED when every site answered the
    init task; TRAINING_STARTED at the first round; then RESULTS_UPLOADED once the model and results are
    verified in S3, or ERROR (with a short reason: never a traceback or a secret) or STOPPED (aborted).
    At END_RUN it calls the validation JSON generator, then persist-and-cleanup, in that order.

    It also hands every site's per-round metrics (they travel with the train result) of the updates the aggregator
    accepted to its :class:`~flip.run_metrics.RunMetrics` (attribute ``metrics``), logs one line per site and
    round, reports them to the platform and keeps ``metrics.json`` in the run folder. The metrics FLIP apps send
    while a task runs (``send_metrics_value``: the federated event ``"_send_result"``) are parsed
    (flip.nvflare.metrics.parse_metric_event: a bad or non-finite value is dropped with a logged reason naming the
    site), recorded under ``flip_metrics`` in ``metrics.json`` and reported to the platform as they arrive, each at
    the round the app gave, else the server's current round (1-based, as every round in metrics.json; 0 before
    the first round, e.g. in an evaluation job). Everything a site sends
    (metrics, privacy annotations, stage, validation results, error reasons) is checked where it arrives against
    flip.site_messages; a bad value is dropped with a logged reason naming the site. The end of the run
    (:func:`flip.nvflare.end_of_run.finish_run`) always reaches a final status: RESULTS_UPLOADED, or ERROR (a
    failure of the run report alone never stops the upload).

    Args:
        model_id: the model's UUID.
        validation_json_generator_id: id of the ValidationJsonGenerator. Default ``json_generator``.
        persist_and_cleanup_id: id of the PersistToS3AndCleanup. Default ``persist_and_cleanup``.
        flip: the platform; default: ``FLIP()`` at run start.

    Raises:
        ValueError: model_id is not a valid UUID.
    """

    def __init__(
        self,
        model_id: str = "",
        validation_json_generator_id=ComponentId.JSON_GENERATOR,
        persist_and_cleanup_id=ComponentId.PERSIST_AND_CLEANUP,
        flip=None,
    ):
        super().__init__()
        self.model_id = check_model_id(model_id)
        self.validation_json_generator_id = check_component_id(
            "validation_json_generator_id", validation_json_generator_id
        )
        self.validation_json_generator = None
        self.persist_and_cleanup_id = check_component_id("persist_and_cleanup_id", persist_and_cleanup_id)
        self.persist_and_cleanup = None
        self.flip = flip
        self._reset()

    def _reset(self) -> None:
        self.platform = None
        self.fatal_error = False
        self.final_status: RunStatus | None = None
        self.reported: list[RunStatus] = []
        self.error_reason: str | None = None
        self.site_errors: dict[str, str] = {}
        self.run_id = ""
        self.job_id = ""
        self.upload_key: str | None = None
        self.metrics = RunMetrics(self.model_id)
        self.current_round: int | None = None  # 0-based, the round the training workflow is in
        self.round_returned: set[str] = set()
        #: whether the run was aborted when its workflows ended (ABOUT_TO_END_RUN); None: not seen yet
        self.aborted_in_workflows: bool | None = None

    # -- status ---------------------------------------------------------------------------------------------
    def report_status(self, fl_ctx: FLContext, status: RunStatus, reason: str | None = None) -> None:
        """Report ``status`` once, in lifecycle order (earlier or repeated statuses are ignored)."""
        if self.final_status is not None or status in self.reported:
            return
        if status in _ORDER and self.reported and _ORDER.index(status) < _ORDER.index(self.reported[-1]):
            return
        self.reported.append(status)
        if status.is_final:
            self.final_status = status
        reason = short_reason(reason) if reason else None
        message = f"run status {status.value}" + (f": {reason}" if reason else "")
        (self.log_error if status == RunStatus.ERROR else self.log_info)(fl_ctx, message)
        if self.platform is None:
            return
        try:
            self.platform.report_status(self.model_id, self.run_id or self.job_id, status, reason)
        except StatusNotDelivered as exc:  # recorded on the server for `flip status --resend`: the status stands
            self.log_error(fl_ctx, f"could not report status {status.value}: {short_reason(exc)}")
        except FlipError as exc:
            self.log_error(fl_ctx, f"could not report status {status.value}: {short_reason(exc)}")
            if status == RunStatus.RESULTS_UPLOADED:
                self.final_status = None
                self.report_status(fl_ctx, RunStatus.ERROR, f"the final status could not be delivered: {exc}")

    # -- events ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == FlipEvent.SITES_PREPARED:
            self.report_status(fl_ctx, RunStatus.PREPARED)
        elif event_type == AppEventType.ROUND_STARTED:
            self._round_started(fl_ctx)
        elif event_type == FlipEvent.ROUND_VALIDATED:
            self._round_validated(fl_ctx)
        elif event_type == FlipEvent.TRAINING_STOPPED:
            self.metrics.stopped_early = fl_ctx.get_prop(FlipProp.STOP_REASON)
            self.log_warning(fl_ctx, f"training stopped early {self.metrics.stopped_early}")
        elif event_type == FlipEvent.SWAG_STARTED:
            self.log_info(
                fl_ctx, "SWAG round started (the DLR demonstrator's SWAG_ROUND; status stays TRAINING_STARTED)"
            )
        elif event_type == FlipEvent.EVALUATION_STARTED:
            self.report_status(fl_ctx, RunStatus.TRAINING_STARTED)  # an evaluation-only run's "training" phase
        elif event_type == AppEventType.AFTER_CONTRIBUTION_ACCEPT:
            self._contribution(fl_ctx)
        elif event_type == AppEventType.ROUND_DONE:
            self._round_done(fl_ctx)
        elif event_type == EventType.BEFORE_PROCESS_SUBMISSION:
            self._submission(fl_ctx)
        elif event_type == FlipEvent.SITE_ERROR:
            self._site_error(fl_ctx)
        elif event_type == FlipEvents.SEND_RESULT:
            self._flip_metric(fl_ctx)
        elif event_type == EventType.FATAL_SYSTEM_ERROR:
            self.fatal_error = True
            reason = fl_ctx.get_prop(FLContextKey.EVENT_DATA, "") or "fatal system error"
            self.error_reason = self.error_reason or short_reason(reason)
        elif event_type == EventType.ABOUT_TO_END_RUN:
            abort = fl_ctx.get_run_abort_signal()
            self.aborted_in_workflows = abort is not None and abort.triggered
        elif event_type == EventType.END_RUN:
            self._end(fl_ctx)

    def _start(self, fl_ctx: FLContext) -> None:
        self._reset()
        self.job_id = fl_ctx.get_job_id()
        self.run_id = new_run_id(self.job_id)
        self.metrics = RunMetrics(self.model_id, self.job_id, self.run_id)
        try:
            self.platform = FLIP() if self.flip is None else self.flip
            self.platform.require_hub()
            self.validation_json_generator = get_component(
                fl_ctx, self.validation_json_generator_id, ValidationJsonGenerator, "validation JSON generator"
            )
            self.persist_and_cleanup = get_component(
                fl_ctx, self.persist_and_cleanup_id, PersistToS3AndCleanup, "persist-and-cleanup"
            )
        except (FlipError, LookupFailed) as exc:
            self.fatal_error = True
            self.error_reason = short_reason(exc)
            self.system_panic(f"{type(self).__name__}: {exc}", fl_ctx)
            return
        self.log_info(fl_ctx, f"model {self.model_id}, run {self.run_id}, platform {self.platform.name}")
        self.report_status(fl_ctx, RunStatus.INITIATED)

    def _round_started(self, fl_ctx: FLContext) -> None:
        self.report_status(fl_ctx, RunStatus.TRAINING_STARTED)
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        self.current_round = current
        self.metrics.num_rounds = fl_ctx.get_prop(AppConstants.NUM_ROUNDS, self.metrics.num_rounds)
        total = f"/{self.metrics.num_rounds}" if self.metrics.num_rounds else ""
        self.log_info(fl_ctx, f"round {current + 1}{total} started")
        self.round_returned = set()
        details = {"total_rounds": self.metrics.num_rounds} if self.metrics.num_rounds else None
        self._to_platform(fl_ctx, "round event", "report_event", FLLogEvent.ROUND_STARTED, current + 1, details=details)

    def _arrived(self, fl_ctx: FLContext, where: str, site: str, check, raw, default):
        """``check(raw)`` (a flip.site_messages function), or ``default`` with a logged reason naming the site."""
        try:
            return check(raw)
        except SiteMessageError as exc:
            self.log_warning(fl_ctx, f"{where}: dropped what {site} sent: {short_reason(exc)}")
            return default

    def _dropped(self, fl_ctx: FLContext, where: str, site: str, reasons: list[str]) -> None:
        for why in reasons:
            self.log_warning(fl_ctx, f"{where}: dropped what {site} sent: {short_reason(why)}")

    def _contribution(self, fl_ctx: FLContext) -> None:
        result = fl_ctx.get_prop(AppConstants.TRAINING_RESULT)
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        site = peer_name(fl_ctx)
        if not isinstance(result, Shareable):
            return
        self._to_platform(
            fl_ctx, "round event", "report_event", FLLogEvent.CLIENT_RESULT_RECEIVED, current + 1, site=site
        )
        if not fl_ctx.get_prop(AppConstants.AGGREGATION_ACCEPTED, False):
            self.log_warning(
                fl_ctx, f"round {current + 1}: the update of {site} was not aggregated; its metrics are not recorded"
            )
            return
        try:
            dxo = from_shareable(result)
            privacy, stage = dxo.get_meta_prop(FlipMeta.PRIVACY), dxo.get_meta_prop(FlipMeta.STAGE)
            num_samples = dxo.get_meta_prop(FlipMeta.NUM_SAMPLES)  # the weight the aggregator accepted (and bounded)
        except (ValueError, TypeError):
            privacy = stage = num_samples = None
        noted = self.metrics.privacy_notes()
        metrics, dropped = self.metrics.add_contribution(
            current, site, result.get_header(FlipMeta.METRICS), privacy, stage, num_samples
        )
        self._dropped(fl_ctx, f"round {current + 1}", site, dropped)
        note = self.metrics.privacy_notes().get(site)
        if note and site not in noted:  # once per site and run: the site's policy and the job's filter both apply
            self.log_warning(fl_ctx, f"{site}: {note}")
        self.log_info(fl_ctx, f"round {current + 1} {site}: " + _format(metrics))
        self.round_returned.add(site)
        self._report_metrics(fl_ctx, current, site, metrics)

    def _round_done(self, fl_ctx: FLContext) -> None:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        means, removed = self.metrics.round_done(
            current,
            fl_ctx.get_prop(FlipProp.AGGREGATION_REPORT),
            fl_ctx.get_prop(FlipProp.SERVER_STEP),
            fl_ctx.get_prop(FlipProp.FEDDC_REPORT),
        )
        for site in removed:  # excluded once every update was in (e.g. its norm): not averaged
            self.log_info(
                fl_ctx,
                f"round {current + 1}: the metrics of {site} are not recorded: its update was "
                "excluded from the average",
            )
        self.log_info(fl_ctx, f"round {current + 1} done, sites' mean: " + _format(means))
        self._to_platform(
            fl_ctx,
            "round event",
            "report_event",
            FLLogEvent.ROUND_AGGREGATED,
            current + 1,
            details={"returned": len(self.round_returned), "expected": _expected_sites(fl_ctx)},
        )
        self._report_metrics(fl_ctx, current, "global", means)
        self._write_metrics(fl_ctx)

    def _round_validated(self, fl_ctx: FLContext) -> None:
        current = fl_ctx.get_prop(AppConstants.CURRENT_ROUND, 0)
        site = fl_ctx.get_prop(AppConstants.DATA_CLIENT) or "?"
        metrics, dropped = self.metrics.add_validation(current, site, fl_ctx.get_prop(FlipProp.ROUND_VALIDATION))
        self._dropped(fl_ctx, f"round {current + 1} validation", site, dropped)
        if metrics is None:
            return
        self.log_info(fl_ctx, f"round {current + 1} global model at {site}: " + _format(metrics))
        self._write_metrics(fl_ctx)

    def _report_metrics(
        self, fl_ctx: FLContext, current: int, site: str, metrics: dict, round_num: int | None = None
    ) -> None:
        """Report ``metrics`` of ``site`` at round ``current + 1`` (or at ``round_num`` as given)."""
        if self.platform is None or not metrics:
            return
        try:
            self.platform.report_metrics(
                self.model_id, self.run_id, current + 1 if round_num is None else round_num, site, metrics
            )
        except FlipError as exc:
            self.log_warning(fl_ctx, f"could not report metrics of {site}: {short_reason(exc)}")

    def _flip_metric(self, fl_ctx: FLContext) -> None:
        """One value a FLIP app sent (``"_send_result"``): parsed, recorded, reported; or dropped with a reason."""
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        if isinstance(data, Shareable):
            sender = data.get_peer_prop(ReservedKey.IDENTITY_NAME, None)
            claimed = data.get_header(FedEventHeader.ORIGIN)
            if isinstance(sender, str) and sender and claimed != sender:
                self.log_warning(
                    fl_ctx,
                    f"a metric from {sender} names its origin {short_reason(repr(claimed))}: recorded as {sender}",
                )
                data.set_header(FedEventHeader.ORIGIN, sender)  # the connection's identity wins over the message
        default_round = 0 if self.current_round is None else self.current_round + 1
        try:
            event = parse_metric_event(data, default_round)
        except MetricDropped as exc:
            self.log_warning(fl_ctx, short_reason(exc))
            return
        if not self.metrics.add_flip_metric(event.round, event.site, event.label, event.value, event.seq):
            if self.metrics.flip_metrics_dropped == 1:
                self.log_warning(
                    fl_ctx,
                    f"metrics of FLIP apps: the run's limit of {self.metrics.flip_metric_values} "
                    f"values is reached; later ones (from {event.site} on) are not recorded",
                )
            return
        self.log_debug(fl_ctx, f"{event.site}: {event.label}={event.value:.4g} (round {event.round})")
        self._report_metrics(fl_ctx, 0, event.site, {event.label: event.value}, round_num=event.round)

    def _to_platform(self, fl_ctx: FLContext, what: str, method: str, *args, **kwargs) -> None:
        """Report a round event or a failure to the platform (one place); a failure to report is logged only."""
        if self.platform is None:
            return
        try:
            getattr(self.platform, method)(self.model_id, self.run_id or self.job_id, *args, **kwargs)
        except FlipError as exc:
            self.log_warning(fl_ctx, f"could not report a {what}: {short_reason(exc)}")

    def _submission(self, fl_ctx: FLContext) -> None:
        """A site's failed task result names its reason in a header: keep it (it arrives with the result)."""
        result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
        if not isinstance(result, Shareable):
            return
        rc = result.get_return_code(ReturnCode.OK)
        if rc in (ReturnCode.OK, ReturnCode.TASK_ABORTED):
            return
        site = peer_name(fl_ctx)
        task = fl_ctx.get_prop(FLContextKey.TASK_NAME, "task")
        reason = result.get_header(FlipMeta.ERROR_REASON)
        if reason is not None:
            reason = self._arrived(fl_ctx, f"{task} result", site, site_messages.error_reason, reason, None)
        reason = reason or _RC_REASONS.get(rc, f"{task} failed ({rc})")
        if site not in self.site_errors:
            self.site_errors[site] = short_reason(reason)
            self._to_platform(fl_ctx, "site failure", "report_failure", site, self.site_errors[site])
        self.log_error(fl_ctx, f"site {site}: {self.site_errors[site]}")

    def _site_error(self, fl_ctx: FLContext) -> None:
        data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
        peer = peer_name(fl_ctx, default=None)
        if isinstance(data, Shareable):
            claimed = data.get_header(FlipMeta.SITE_NAME)
            claimed = (
                None
                if claimed is None
                else self._arrived(
                    fl_ctx,
                    "site error",
                    peer or "a site",
                    lambda raw: site_messages.name(raw, FlipMeta.SITE_NAME),
                    claimed,
                    None,
                )
            )
            if peer and claimed and claimed != peer:
                self.log_warning(fl_ctx, f"site error: {peer} sent it under the name {claimed!r}: recorded as {peer}")
            site = peer or claimed or "?"  # the connection's identity wins over a name in the message
            reason = self._arrived(
                fl_ctx,
                "site error",
                site,
                site_messages.error_reason,
                data.get_header(FlipMeta.ERROR_REASON, "error"),
                "error",
            )
            reason = short_reason(reason)
            if site not in self.site_errors:
                self.site_errors[site] = reason
                self.log_error(fl_ctx, f"site {site} reported: {reason}")
                self._to_platform(fl_ctx, "site failure", "report_failure", site, reason)

    def _write_metrics(self, fl_ctx: FLContext) -> None:
        self.metrics.write(run_dir(fl_ctx) / RunFile.METRICS)

    # -- the end --------------------------------------------------------------------------------------------
    def _end(self, fl_ctx: FLContext) -> None:
        """End the run; whatever goes wrong, the run ends in a final status."""
        try:
            self._finish(fl_ctx)
        except Exception as exc:  # noqa: BLE001
            # The one boundary that catches everything, on purpose: NVFlare swallows an exception raised by an event
            # handler, so one that escaped here would leave the status at its last value (e.g. INITIATED) with no
            # upload and no pending record. Expected failures are handled in _finish; this is for the unexpected
            # (a bug, a library's surprise), and it ends the run in ERROR with a short reason.
            self.log_exception(fl_ctx, f"the end of the run failed: {type(exc).__name__}")
            self.report_status(
                fl_ctx, RunStatus.ERROR, f"the end of the run failed ({type(exc).__name__}: {short_reason(exc)})"
            )

    def _finish(self, fl_ctx: FLContext) -> None:
        abort = fl_ctx.get_run_abort_signal()
        if self.fatal_error or fl_ctx.get_prop(FLContextKey.FATAL_SYSTEM_ERROR, False):
            reason = self._failure_reason()
            self.report_status(fl_ctx, RunStatus.ERROR, reason)
            self.log_error(fl_ctx, "the run failed: nothing was uploaded and nothing was deleted")
            return
        # An abort after every workflow ended (the simulator aborts the server once its sites are done, while
        # the server still waits for the sites' last metrics events) does not undo a completed run.
        aborted = abort is not None and abort.triggered
        if self.aborted_in_workflows is not None:
            aborted = self.aborted_in_workflows
        if aborted:
            self.report_status(fl_ctx, RunStatus.STOPPED, "the run was aborted")
            return
        end = finish_run(
            self, fl_ctx, self.metrics, self.validation_json_generator, self.persist_and_cleanup, self.reported
        )
        self.upload_key = end.upload_key
        self.report_status(fl_ctx, end.status, end.reason)
        if end.advice:
            self.log_error(fl_ctx, end.advice)

    def _failure_reason(self) -> str:
        if self.site_errors:
            site, reason = sorted(self.site_errors.items())[0]
            return f"site {site}: {reason}"
        return self.error_reason or "the run failed"


def _expected_sites(fl_ctx: FLContext) -> int | None:
    """How many sites the run has (the engine's clients), or None if the engine does not say."""
    try:
        return len(fl_ctx.get_engine().get_clients())
    except Exception:  # noqa: BLE001 - a best-effort detail of a round event: never fails the round
        return None


def _format(metrics: dict[str, Any]) -> str:
    return format_metrics(metrics) or "no metrics"
