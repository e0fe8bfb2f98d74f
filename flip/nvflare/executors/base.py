"""The part every executor of user code shares: loading it once, the site's data, failures at the boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.log_utils import get_obj_logger

from nvflare.apis.dxo import DataKind, from_shareable

from flip import FLIP
from flip.constants import FlipMeta, UserFile
from flip.errors import FlipError, TaskFailed, UserCodeError
from flip.nvflare.executors.user_code import (
    TaskContext,
    build_model,
    display_path,
    instantiate,
    load_class,
    load_config,
)
from flip.nvflare.models import load_weights
from flip.nvflare.utils import app_custom_dir, log_site_failure


class UserCodeExecutor(Executor):
    """Base of RUN_TRAINER / RUN_VALIDATOR / RUN_EVALUATOR: subclasses implement :meth:`run_task`."""

    #: task names this executor serves
    tasks: tuple[str, ...] = ()

    def __init__(self):
        super().__init__()
        self.custom_dir: Path | None = None
        self.config: dict[str, Any] | None = None
        self.platform = None
        self._user_objects: dict[str, Any] = {}

    # -- helpers for subclasses -----------------------------------------------------------------------------
    def setup(self, fl_ctx: FLContext) -> None:
        """Find the custom folder and read config.json (once per run)."""
        if self.config is None:
            self.custom_dir = app_custom_dir(fl_ctx)
            self.config = load_config(self.custom_dir)

    def user_object(self, key: str, factory) -> Any:
        """Create a user object once per run (e.g. the trainer, which may cache its data)."""
        if key not in self._user_objects:
            self._user_objects[key] = factory()
        return self._user_objects[key]

    def new_model(self) -> torch.nn.Module:
        return build_model(self.custom_dir)

    def user_instance(self, file_name: str, class_name: str, method: str) -> Any:
        """The user's ``class_name(config)`` from ``file_name`` (created once per run), checked for ``method``."""
        return self.user_object(class_name, lambda: instantiate(
            load_class(self.custom_dir, file_name, class_name, (method,)), self.config, file_name))

    def model_from_task(self, task_name: str, shareable: Shareable, device: str) -> tuple[dict, torch.nn.Module]:
        """The WEIGHTS the task carries, and ``models.get_model()`` holding them on ``device``.

        Raises:
            TaskFailed: the task carries no WEIGHTS DXO.
            UserCodeError: get_model() does not fit the weights (names the parameter).
        """
        try:
            incoming = from_shareable(shareable)
        except ValueError as exc:
            raise TaskFailed(f"the {task_name} task carried no model: {exc}") from exc
        if incoming.data_kind != DataKind.WEIGHTS or not isinstance(incoming.data, dict):
            raise TaskFailed(f"the {task_name} task carried {incoming.data_kind}: expected WEIGHTS")
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "the global model")
        model = self.new_model()
        try:
            load_weights(model, incoming.data, str(owner))
        except ValueError as exc:
            raise UserCodeError(f"{display_path(UserFile.MODELS)}: get_model() does not fit {owner}: {exc}") from exc
        return incoming.data, model.to(device)

    def data_dir(self, fl_ctx: FLContext) -> Path:
        if self.platform is None:
            self.platform = FLIP()
        return self.platform.prepare_site_data(fl_ctx.get_identity_name(), fl_ctx.get_job_id())

    def context(self, fl_ctx: FLContext, shareable: Shareable, abort_signal: Signal) -> TaskContext:
        return TaskContext(
            site_name=fl_ctx.get_identity_name(),
            job_id=fl_ctx.get_job_id(),
            round=int(shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0),
            total_rounds=int(shareable.get_header(AppConstants.NUM_ROUNDS, 1) or 1),
            data_dir=self.data_dir(fl_ctx),
            config=dict(self.config or {}),
            stage=shareable.get_header(FlipMeta.STAGE),
            device="cuda" if torch.cuda.is_available() else "cpu",
            should_abort=lambda: abort_signal.triggered,
            log=lambda msg: get_obj_logger(self).info(str(msg)),
        )

    # -- the boundary ---------------------------------------------------------------------------------------
    def run_task(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        raise NotImplementedError

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name not in self.tasks:
            self.log_error(fl_ctx, f"{type(self).__name__} cannot run task {task_name!r} (it runs {list(self.tasks)})")
            return make_reply(ReturnCode.TASK_UNKNOWN)
        try:
            self.setup(fl_ctx)
            result = self.run_task(task_name, shareable, fl_ctx, abort_signal)
        except TaskFailed as exc:
            return self.failure(fl_ctx, task_name, exc.reason, None)
        except FlipError as exc:
            return self.failure(fl_ctx, task_name, str(exc), exc)
        if abort_signal.triggered:
            self.log_info(fl_ctx, f"{task_name}: aborted")
            return make_reply(ReturnCode.TASK_ABORTED)
        return result

    def failure(self, fl_ctx: FLContext, task_name: str, reason: str, exc: BaseException | None) -> Shareable:
        """Reply EXECUTION_EXCEPTION with a short reason; log that reason at error level, the detail (the full
        reason, the traceback) at debug level only (see :func:`log_site_failure`)."""
        reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
        reply.set_header(FlipMeta.ERROR_REASON, log_site_failure(self, fl_ctx, f"{task_name} failed", reason, exc))
        return reply


def call_user(what: str, function, *args) -> Any:
    """Call user code; any exception becomes a UserCodeError naming ``what`` and the exception type only."""
    try:
        return function(*args)
    except Exception as exc:  # noqa: BLE001 - the user-code boundary: report every failure the same way
        raise UserCodeError(f"{what} raised {type(exc).__name__}") from exc
