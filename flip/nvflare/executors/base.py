"""The part every executor of user code shares: which contract the user's class follows, loading it once, the
site's data, failures at the boundary.

Three contracts, told apart by the user's class itself (so FLIP's job configs and ours select them as they are):

- FLIP's **Executor** contract (flip-fl-base): ``FLIP_TRAINER`` subclasses ``nvflare.apis.executor.Executor``; it
  is built with FLIP's keywords (``project_id``, ``query``, the task names) and every task is delegated to its
  ``execute`` (:class:`~flip.nvflare.executors.flip_apps.FlipExecutorApp`);
- FLIP's **MONAI FL** contract: ``FLIP_TRAINER`` subclasses MONAI's ``ClientAlgo``
  (:class:`~flip.nvflare.executors.flip_apps.ClientAlgoApp`; the RUN_MONAI_FL_* executors require it);
- our **plain** contract: ``FLIP_TRAINER(config)`` with ``train(model, ctx)`` (flip.nvflare.executors.user_code).

Whatever the contract, the site the process serves is named (flip.platform.site.site_context) while the user's
objects are created and called, so FLIP's ``get_dataframe`` gives this site's data, and a failure becomes one
short reason (never a traceback or the user's message, which can hold data) sent to the server.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants
from nvflare.fuel.utils.log_utils import get_obj_logger

from flip import FLIP
from flip.checks import check_component_id, check_str
from flip.constants import FlipMeta, UserFile
from flip.errors import FlipError, TaskFailed, UserCodeError
from flip.nvflare.executors.user_code import (
    TaskContext,
    build_model,
    describe_failure,
    display_path,
    instantiate,
    load_class,
    load_config,
    load_module,
)
from flip.nvflare.models import ReusedModel
from flip.nvflare.utils import app_custom_dir, log_site_failure
from flip.platform.site import site_context
from flip.utils.dp import make_private

#: the contracts a user's class can follow
PLAIN, FLIP_EXECUTOR, CLIENT_ALGO = "plain", "executor", "client_algo"

#: each site's model, built once and shared by its executors (a process may serve several sites: the simulator)
_SITE_MODELS: dict[tuple[str, str], ReusedModel] = {}
_SITE_MODELS_LOCK = threading.Lock()


def release_site_models(site: str) -> None:
    """Drop the models kept for ``site`` (at the end of its run)."""
    with _SITE_MODELS_LOCK:
        for key in [k for k in _SITE_MODELS if k[0] == site]:
            del _SITE_MODELS[key]


def check_task_name(name: str, value: Any) -> str:
    """Return ``value`` if it is a task name (a component id's rule: letters, digits, '_', '.', '-')."""
    return check_component_id(name, value)


def check_project_id(value: Any) -> str:
    """Return FLIP's ``project_id`` if it is a string of printable characters (empty allowed, as FLIP's default)."""
    return check_str("project_id", value, empty=True, max_length=1000)


def check_query(value: Any) -> str:
    """Return FLIP's cohort ``query`` if it is a string (empty allowed; SQL may span lines)."""
    if not isinstance(value, str) or len(value) > 100_000:
        raise ValueError(
            f"query must be a string of at most 100000 characters, got {type(value).__name__}"
            + (f" of {len(value)}" if isinstance(value, str) else "")
        )
    return value


def contract_of(cls: type) -> str:
    """Which contract the user's class follows: FLIP's Executor one, MONAI FL's ClientAlgo one, or ours."""
    if issubclass(cls, Executor):
        return FLIP_EXECUTOR
    if any((c.__module__ or "").startswith("monai.fl") and c.__name__ == "ClientAlgo" for c in cls.__mro__):
        return CLIENT_ALGO
    return PLAIN


class UserCodeExecutor(Executor):
    """Base of RUN_TRAINER / RUN_VALIDATOR / RUN_EVALUATOR: subclasses implement :meth:`run_task` (our plain
    contract) and :meth:`flip_keywords` / :meth:`monai_keywords` (how FLIP builds the user's class).

    Args:
        project_id: FLIP's project id, given to a FLIP app's class. Default "".
        query: FLIP's cohort query, given to a FLIP app's class. Default "".
    """

    #: task names this executor serves under our plain contract
    tasks: tuple[str, ...] = ()
    #: the user's file and class
    user_file = ""
    user_class = ""
    #: the methods our plain contract needs
    plain_methods: tuple[str, ...] = ()
    #: the contract this executor requires (None: whichever the class follows)
    required_contract: str | None = None

    def __init__(self, project_id: str = "", query: str = ""):
        super().__init__()
        self.project_id = check_project_id(project_id)
        self.query = check_query(query)
        self.custom_dir: Path | None = None
        self.config: dict[str, Any] | None = None
        self.platform = None
        self._user_objects: dict[str, Any] = {}
        self._app = None  # a FLIP app (FlipExecutorApp or ClientAlgoApp) once the user's class says so
        self._plain = False  # the user's class follows our plain contract (decided once)

    # -- how FLIP builds the user's class -------------------------------------------------------------------
    def flip_keywords(self) -> dict[str, Any]:
        """The keywords FLIP's executor builds the user's Executor with."""
        return {"project_id": self.project_id, "query": self.query}

    def monai_keywords(self) -> dict[str, Any]:
        """The keywords FLIP's MONAI FL adapter builds the user's ClientAlgo with."""
        return {"project_id": self.project_id, "query": self.query}

    def monai_methods(self) -> tuple[str, ...]:
        """The ClientAlgo methods this executor calls."""
        return ("initialize", "evaluate")

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
        return self.user_object(
            class_name,
            lambda: instantiate(load_class(self.custom_dir, file_name, class_name, (method,)), self.config, file_name),
        )

    def model_from_task(
        self, task_name: str, shareable: Shareable, device: str, site: str = ""
    ) -> tuple[dict, torch.nn.Module]:
        """The WEIGHTS the task carries, and ``models.get_model()`` holding them on ``device``: the site's model is
        built once and reused by every task and executor of the site (flip.nvflare.models.ReusedModel: the same
        state as a freshly built model holding the weights), dropped at END_RUN.

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
        key = (site, str(self.custom_dir))
        with _SITE_MODELS_LOCK:
            kept = _SITE_MODELS.get(key)  # a site runs one task at a time
        if kept is None or not kept.fits(incoming.data):
            kept = ReusedModel(self.new_model(), incoming.data)
        try:
            model = kept.prepare(incoming.data, str(owner))
        except ValueError as exc:
            raise UserCodeError(f"{display_path(UserFile.MODELS)}: get_model() does not fit {owner}: {exc}") from exc
        model = model.to(device)
        with _SITE_MODELS_LOCK:
            _SITE_MODELS[key] = kept
        return incoming.data, model

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.END_RUN:
            release_site_models(fl_ctx.get_identity_name())
        super().handle_event(event_type, fl_ctx)

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
            make_private=lambda model, optimizer, data_loader, epochs=1: make_private(
                model, optimizer, data_loader, fl_ctx, epochs=epochs
            ),
        )

    # -- the contract ---------------------------------------------------------------------------------------
    def flip_app(self, fl_ctx: FLContext):
        """The FLIP app this executor runs, or None under our plain contract (decided once, from the user's class).

        Raises:
            UserCodeError: the user's file or class is missing, or does not follow the contract this executor
                requires (each named).
        """
        if self._app is not None or self._plain:
            return self._app
        from flip.nvflare.executors.flip_apps import ClientAlgoApp, FlipExecutorApp

        self.custom_dir = self.custom_dir or app_custom_dir(fl_ctx)
        expected = f"class {self.user_class} with method(s) {', '.join(self.plain_methods)}"
        if self.required_contract == CLIENT_ALGO:
            cls = load_class(self.custom_dir, self.user_file, self.user_class, self.monai_methods())
            if contract_of(cls) != CLIENT_ALGO:
                raise UserCodeError(
                    f"{display_path(self.user_file)}: {self.user_class} must subclass MONAI's "
                    f"ClientAlgo (monai.fl.client.ClientAlgo) for {type(self).__name__}"
                )
        else:
            cls = getattr(load_module(self.custom_dir, self.user_file, expected), self.user_class, None)
            if not isinstance(cls, type):
                load_class(self.custom_dir, self.user_file, self.user_class, self.plain_methods)  # names what is wrong
            if contract_of(cls) == PLAIN:
                self._plain = True  # our plain contract: run_task builds the class
                return None
        if contract_of(cls) == FLIP_EXECUTOR:
            self._app = FlipExecutorApp(cls, self.user_file, self.flip_keywords(), self.custom_dir)
        else:
            self._app = ClientAlgoApp(cls, self.user_file, self.monai_keywords(), self.custom_dir, self)
        self.log_info(
            fl_ctx,
            f"{display_path(self.user_file)}: {self.user_class} follows FLIP's "
            f"{'Executor' if self._app.kind == FLIP_EXECUTOR else 'MONAI FL ClientAlgo'} contract",
        )
        return self._app

    # -- the boundary ---------------------------------------------------------------------------------------
    def run_task(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        raise NotImplementedError

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        try:
            scope = site_context(fl_ctx.get_identity_name())
        except ValueError as exc:
            return self.failure(fl_ctx, task_name, f"this site's name cannot name its data: {exc}", exc)
        with scope:
            return self._execute(task_name, shareable, fl_ctx, abort_signal)

    def _execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        try:
            app = self.flip_app(fl_ctx)
            if app is not None:
                return app.execute(self, task_name, shareable, fl_ctx, abort_signal)
        except TaskFailed as exc:
            return self.failure(fl_ctx, task_name, exc.reason, None)
        except FlipError as exc:
            return self.failure(fl_ctx, task_name, str(exc), exc)
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


def call_user(what: str, function, *args, custom_dir: Path | None = None, **kwargs) -> Any:
    """Call user code; any exception becomes a UserCodeError naming ``what`` and the failure as
    :func:`~flip.nvflare.executors.user_code.describe_failure` tells it (type; flip's own message; the line in
    ``custom_dir``), never the user's own message."""
    try:
        return function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the user-code boundary: report every failure the same way
        raise UserCodeError(f"{what} raised {describe_failure(exc, custom_dir)}") from exc
