"""ClientEventHandler: a site's failures reach the server as a short reason; nothing else leaves the site."""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.constants import FlipEvent, FlipMeta, FlipProp
from flip.errors import FlipError
from flip.metrics import clean_metrics
from flip.nvflare.utils import short_reason


class ClientEventHandler(FLComponent):
    """Handle a site's system and flip events.

    - The metrics of a task (the trainer's loss, accuracy, number of samples and any number it returns) are
      checked (named finite numbers only: never text, arrays or data values) and sent to the server with the
      task's result, as the header ``flip_metrics``; the server reports them and writes them to metrics.json.
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
        elif event_type == EventType.FATAL_SYSTEM_ERROR:
            self.send_site_error(fl_ctx, fl_ctx.get_prop(FLContextKey.EVENT_DATA, "fatal error"))

    def attach_metrics(self, fl_ctx: FLContext, result: Shareable, metrics) -> None:
        """Put the task's checked metrics on its result (anything that is not a named number is dropped)."""
        try:
            clean = clean_metrics(metrics, "the task's metrics")
        except FlipError as exc:
            self.log_warning(fl_ctx, f"metrics not sent: {exc}")
            return
        result.set_header(FlipMeta.METRICS, clean)

    def send_site_error(self, fl_ctx: FLContext, reason: str) -> None:
        """Send ``reason`` (made short and secret-free) to the server."""
        site = fl_ctx.get_identity_name()
        reason = short_reason(reason)
        message = Shareable()
        message.set_header(FlipMeta.SITE_NAME, site)
        message.set_header(FlipMeta.ERROR_REASON, reason)
        self.log_error(fl_ctx, f"reporting to the server: {reason}")
        self.fire_fed_event(FlipEvent.SITE_ERROR, message, fl_ctx)
