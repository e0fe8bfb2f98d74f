"""What FLIP's own workflows (those not built on NVFlare's ScatterAndGather) share."""

from __future__ import annotations

from nvflare.apis.client import Client
from nvflare.apis.fl_context import FLContext
from nvflare.apis.impl.controller import Controller
from nvflare.apis.shareable import Shareable


class FlipController(Controller):
    """A Controller that cancels its tasks when stopped and logs, then ignores, results of tasks it no longer has."""

    #: appended to the warning about a late result (e.g. why it cannot be used)
    late_result_note = ""

    def stop_controller(self, fl_ctx: FLContext) -> None:
        self.cancel_all_tasks(fl_ctx=fl_ctx)

    def process_result_of_unknown_task(
        self, client: Client, task_name: str, client_task_id: str, result: Shareable, fl_ctx: FLContext
    ) -> None:
        self.log_warning(fl_ctx, f"ignored a late {task_name} result from {client.name}{self.late_result_note}")
