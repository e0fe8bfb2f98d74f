"""ClientEventHandler: a site's metrics travel with its result, through the privacy filters; failures reach the
server as a short reason; nothing else leaves the site."""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.constants import FlipEvent, FlipMeta, FlipProp
from flip.errors import FlipError
from flip.methods.weighted import float_entries, l2_norm
from flip.metrics import clean_metrics
from flip.nvflare.result_policy import is_training_task
from flip.nvflare.utils import short_reason

#: the metric that says how large the update that left the site is (after every filter)
UPDATE_NORM = "update_norm"


def leaving_norm(dxo: DXO) -> float:
    """The L2 norm of the floating-point entries of an update as it leaves (a WEIGHT_DIFF, or every WEIGHT_DIFF of
    a COLLECTION): a function of what is sent anyway."""
    if dxo.data_kind == DataKind.COLLECTION and isinstance(dxo.data, dict):
        return l2_norm(
            a
            for part in dxo.data.values()
            if isinstance(part, DXO) and isinstance(part.data, dict)
            for a in float_entries(part.data)
        )
    return l2_norm(float_entries(dxo.data)) if isinstance(dxo.data, dict) else 0.0


def site_error_message(site: str, reason: str) -> Shareable:
    """The federated event's data that tells the server a task failed at ``site`` (``reason`` made short)."""
    message = Shareable()
    message.set_header(FlipMeta.SITE_NAME, site)
    message.set_header(FlipMeta.ERROR_REASON, short_reason(reason))
    return message


class ClientEventHandler(FLComponent):
    """Handle a site's system and flip events.

    - The metrics of a task (the trainer's loss, accuracy, number of samples and any number it returns) are
      checked (named finite numbers only: never text, arrays or data values) and put on the task's result as the
      header ``flip_metrics`` *before* the result filters run (NVFlare's AFTER_TASK_EXECUTION), so every privacy
      filter sees them: a differential-privacy filter, or the site's SitePrivacyPolicy, withholds those computed
      on the site's data (flip.privacy.release).
    - Once every filter ran (AFTER_TASK_RESULT_FILTER), a training result's ``update_norm`` is the L2 norm of the
      update as it leaves the site: never the trainer's norm before clipping or filtering.
    - A task that failed at this site (the executor's reply carries a short reason, never a traceback or data
      values) is reported to the server as the federated event ``flip.site_error``; the server's
      :class:`ServerEventHandler` names it in the run's ERROR status.
    - A fatal error at the site is reported the same way.

    Metrics travel with the result they describe, so they arrive with (and only with) that update.
    """

    def __init__(self):
        super().__init__()

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.AFTER_TASK_EXECUTION:
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            if isinstance(result, Shareable):
                rc = result.get_return_code(ReturnCode.OK)
                metrics = fl_ctx.get_prop(FlipProp.TASK_METRICS)
                if rc == ReturnCode.OK and metrics:
                    self.attach_metrics(fl_ctx, result, metrics)
                if rc not in (ReturnCode.OK, ReturnCode.TASK_ABORTED):
                    task = fl_ctx.get_prop(FLContextKey.TASK_NAME, "task")
                    reason = result.get_header(FlipMeta.ERROR_REASON) or f"{task} failed ({rc})"
                    self.send_site_error(fl_ctx, reason)
        elif event_type == EventType.AFTER_TASK_RESULT_FILTER:
            self.attach_update_norm(fl_ctx, fl_ctx.get_prop(FLContextKey.TASK_RESULT))
        elif event_type == EventType.FATAL_SYSTEM_ERROR:
            self.send_site_error(fl_ctx, fl_ctx.get_prop(FLContextKey.EVENT_DATA, "fatal error"))

    def attach_metrics(self, fl_ctx: FLContext, result: Shareable, metrics) -> None:
        """Put the task's checked metrics on its result (anything that is not a named number is dropped)."""
        try:
            clean = clean_metrics(metrics, "the task's metrics")
        except FlipError as exc:
            self.log_warning(fl_ctx, f"metrics not sent: {exc}")
            return
        clean.pop(UPDATE_NORM, None)  # only the norm of what leaves is sent (attach_update_norm)
        result.set_header(FlipMeta.METRICS, clean)

    def attach_update_norm(self, fl_ctx: FLContext, result: Any) -> None:
        """Set ``update_norm`` of a training result to the norm of the update as it leaves, after every filter."""
        if not isinstance(result, Shareable) or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return
        if not is_training_task(fl_ctx.get_prop(FLContextKey.TASK_NAME)):
            return
        try:
            dxo = from_shareable(result)
        except (ValueError, TypeError, KeyError):
            return
        if dxo.data_kind not in (DataKind.WEIGHT_DIFF, DataKind.COLLECTION):
            return
        metrics = result.get_header(FlipMeta.METRICS)
        metrics = dict(metrics) if isinstance(metrics, dict) else {}
        metrics[UPDATE_NORM] = leaving_norm(dxo)
        result.set_header(FlipMeta.METRICS, metrics)

    def send_site_error(self, fl_ctx: FLContext, reason: str) -> None:
        """Send ``reason`` (made short and secret-free) to the server."""
        message = site_error_message(fl_ctx.get_identity_name(), reason)
        self.log_error(fl_ctx, f"reporting to the server: {message.get_header(FlipMeta.ERROR_REASON)}")
        self.fire_fed_event(FlipEvent.SITE_ERROR, message, fl_ctx)
