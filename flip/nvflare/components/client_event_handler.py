"""ClientEventHandler: a site's failures reach the server as a short reason; nothing else leaves the site."""

from __future__ import annotations

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.constants import FlipEvent, FlipMeta
from flip.nvflare.utils import short_reason


class ClientEventHandler(FLComponent):
    """Handle a site's system and flip events.

    - A task that failed at this site (the executor's reply carries a short reason, never a traceback or data
      values) is reported to the server as the federated event ``flip.site_error``; the server's
      :class:`ServerEventHandler` names it in the run's ERROR status.
    - A fatal error at the site is reported the same way.

    Metrics travel inside each train result (DXO meta), so they arrive with the update they describe.
    """

    def __init__(self):
        super().__init__()

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.AFTER_TASK_EXECUTION:
            result = fl_ctx.get_prop(FLContextKey.TASK_RESULT)
            if isinstance(result, Shareable):
                rc = result.get_return_code(ReturnCode.OK)
                if rc not in (ReturnCode.OK, ReturnCode.TASK_ABORTED):
                    task = fl_ctx.get_prop(FLContextKey.TASK_NAME, "task")
                    reason = result.get_header(FlipMeta.ERROR_REASON) or f"{task} failed ({rc})"
                    self.send_site_error(fl_ctx, reason)
        elif event_type == EventType.FATAL_SYSTEM_ERROR:
            self.send_site_error(fl_ctx, fl_ctx.get_prop(FLContextKey.EVENT_DATA, "fatal error"))

    def send_site_error(self, fl_ctx: FLContext, reason: str) -> None:
        """Send ``reason`` (made short and secret-free) to the server."""
        site = fl_ctx.get_identity_name()
        message = Shareable()
        message.set_header(FlipMeta.SITE_NAME, site)
        message.set_header(FlipMeta.ERROR_REASON, short_reason(reason))
        self.log_error(fl_ctx, f"reporting to the server: {short_reason(reason)}")
        self.fire_fed_event(FlipEvent.SITE_ERROR, message, fl_ctx)
