"""InitTraining: the first step of a FLIP run: every site prepares (cleans stale images) and reports ready."""

from __future__ import annotations

from nvflare.apis.controller_spec import Task
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal

from flip import site_messages
from flip.checks import check_positive_int
from flip.constants import FlipEvent, FlipMeta, FlipTask
from flip.errors import SiteMessageError
from flip.nvflare.controllers.base import FlipController
from flip.nvflare.utils import short_reason


class InitTraining(FlipController):
    """Send ``init_training`` to every site and wait until at least ``min_clients`` answered OK.

    Sites run :class:`~flip.nvflare.components.CleanupImages` for it (a clean slate for this run's images).
    When enough sites are ready it fires ``flip.sites_prepared`` (the run becomes PREPARED); otherwise the
    run fails with the sites' reasons.

    Args:
        min_clients: sites that must be ready (>= 1). Default 1.
        timeout: seconds to wait for them (>= 1). Default 600.
        wait_time_after_min_received: once min_clients answered, seconds to wait for the others (>= 0).
            Default 60 (no wait once every site answered).
    """

    def __init__(self, min_clients: int = 1, timeout: int = 600, wait_time_after_min_received: int = 60):
        super().__init__()
        self.min_clients = check_positive_int("min_clients", min_clients)
        self.timeout = check_positive_int("timeout", timeout)
        self.wait_time_after_min_received = check_positive_int(
            "wait_time_after_min_received", wait_time_after_min_received, minimum=0
        )

    def start_controller(self, fl_ctx: FLContext) -> None:
        clients = self._engine.get_clients()
        if len(clients) < self.min_clients:
            self.system_panic(
                f"InitTraining: min_clients is {self.min_clients} but only {len(clients)} sites joined the run",
                fl_ctx,
            )

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        task = Task(name=FlipTask.INIT_TRAINING, data=Shareable(), timeout=self.timeout)
        self.broadcast_and_wait(
            task=task,
            fl_ctx=fl_ctx,
            min_responses=self.min_clients,
            wait_time_after_min_received=self.wait_time_after_min_received,
            abort_signal=abort_signal,
        )
        if abort_signal.triggered:
            return
        ready, failed = [], {}
        for client_task in task.client_tasks:
            result = client_task.result
            rc = result.get_return_code(ReturnCode.OK) if isinstance(result, Shareable) else "NO_ANSWER"
            if rc == ReturnCode.OK:
                ready.append(client_task.client.name)
            else:
                reason = result.get_header(FlipMeta.ERROR_REASON) if isinstance(result, Shareable) else None
                try:
                    reason = None if reason is None else site_messages.error_reason(reason)
                except SiteMessageError as exc:
                    self.log_warning(fl_ctx, f"init_training: dropped what {client_task.client.name} sent: {exc}")
                    reason = None
                failed[client_task.client.name] = short_reason(reason or rc)
        if len(ready) < self.min_clients:
            details = "; ".join(f"{site}: {why}" for site, why in sorted(failed.items())) or "no answer"
            self.system_panic(f"only {len(ready)} of {self.min_clients} required sites are ready ({details})", fl_ctx)
            return
        self.log_info(fl_ctx, f"{len(ready)} sites ready: {', '.join(sorted(ready))}")
        self.fire_event(FlipEvent.SITES_PREPARED, fl_ctx)
