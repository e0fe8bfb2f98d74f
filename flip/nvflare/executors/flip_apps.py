"""FLIP apps run unchanged: the user's NVFlare Executor (flip-fl-base) or MONAI FL ClientAlgo, behind our boundary.

:class:`FlipExecutorApp` builds the user's ``Executor`` subclass once, with FLIP's keywords, and delegates every
task to its ``execute``. :class:`ClientAlgoApp` drives a MONAI ``ClientAlgo`` through its lifecycle
(``initialize`` once; ``train`` then ``get_weights`` (WEIGHT_DIFF); ``get_weights`` (WEIGHTS) for
``submit_model``; ``evaluate``), translating Shareables to ``ExchangeObject`` and back.

What leaves the executor is made what our site sends (:func:`finish_reply`), whatever the app returned:

- an error reply keeps only its return code and gets a short reason of ours (a FLIP app's own headers, such as a
  traceback, stay at the site);
- a WEIGHT_DIFF without ``flip_num_samples`` (FLIP's trainers weigh an update by its steps) gets it from
  ``NUM_STEPS_CURRENT_ROUND``: FLIP's aggregator weights each site's update by that count, and so does ours then
  (a missing count weighs 1, as in NVFlare's aggregator); tensors become numpy arrays;
- METRICS become plain numbers, nested in dicts and lists as the app built them (FLIP's validators return
  ``{"f1-score": {"Effusion": [...]}}``), non-finite ones dropped with a logged note
  (flip.metrics.clean_nested_metrics); anything else in them fails the task, naming the entry.

Any exception of the app fails the task with a short reason: the type, flip's own message when flip raised it
(e.g. a dev dataframe without ``accession_id``), the line of the app it came through; never the app's message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.checks import is_int
from flip.constants import FlipMeta
from flip.errors import TaskFailed, UserCodeError
from flip.metrics import clean_nested_metrics
from flip.nvflare.executors.base import CLIENT_ALGO, FLIP_EXECUTOR, call_user
from flip.nvflare.executors.user_code import display_path
from flip.nvflare.utils import log_site_failure

#: what a ClientAlgo task does (RUN_MONAI_FL_* map their task names to these)
TRAIN, SUBMIT, EVALUATE = "train", "submit", "evaluate"


def to_numpy(weights: Any, who: str) -> dict[str, np.ndarray]:
    """A dict of CPU numpy arrays from a dict of tensors or arrays (bfloat16 as float32; 0-d stays an array).

    Raises:
        UserCodeError: not a dict, or an entry that is neither (named).
    """
    import torch

    if not isinstance(weights, dict):
        raise UserCodeError(f"{who} returned weights of type {type(weights).__name__}: expected a dict of arrays")
    out = {}
    for name, value in weights.items():
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            out[name] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        elif isinstance(value, (np.ndarray, np.generic)):
            out[name] = np.asarray(value)
        else:
            raise UserCodeError(f"{who} returned weight {name!r} of type {type(value).__name__}: expected an array")
    return out


def samples_from_steps(executor, fl_ctx: FLContext, dxo: DXO) -> None:
    """Give a WEIGHT_DIFF without ``flip_num_samples`` its weight: ``NUM_STEPS_CURRENT_ROUND`` (FLIP's rule), 1 if
    it has none; a count that is not a positive integer is left for the server to refuse (logged)."""
    if dxo.get_meta_prop(FlipMeta.NUM_SAMPLES) is not None:
        return
    steps = dxo.get_meta_prop(MetaKey.NUM_STEPS_CURRENT_ROUND)
    if steps is None:
        executor.log_warning(fl_ctx, "the update has no NUM_STEPS_CURRENT_ROUND: it is weighted 1 in the average")
        dxo.set_meta_prop(FlipMeta.NUM_SAMPLES, 1)
    elif is_int(steps) and steps >= 1:
        dxo.set_meta_prop(FlipMeta.NUM_SAMPLES, int(steps))
    else:
        executor.log_warning(
            fl_ctx,
            f"the update's NUM_STEPS_CURRENT_ROUND is {steps!r}, not a positive integer: "
            "the server will not average it",
        )


def finish_reply(executor, fl_ctx: FLContext, task_name: str, reply: Any, who: str) -> Shareable:
    """What leaves the executor for an app's ``reply`` (the rules in the module docstring).

    Raises:
        UserCodeError: the reply is not a Shareable, or its metrics hold something that is not a number (named).
    """
    if not isinstance(reply, Shareable):
        raise UserCodeError(f"{who} returned a {type(reply).__name__}: expected an nvflare Shareable")
    rc = reply.get_return_code(ReturnCode.OK)
    if rc == ReturnCode.TASK_ABORTED:
        return make_reply(ReturnCode.TASK_ABORTED)
    if rc != ReturnCode.OK:
        clean = make_reply(rc)
        clean.set_header(
            FlipMeta.ERROR_REASON, log_site_failure(executor, fl_ctx, f"{task_name} failed", f"{who} replied {rc}")
        )
        return clean
    try:
        dxo = from_shareable(reply)
    except (ValueError, TypeError, KeyError):
        return reply  # no DXO (an empty reply): the site's privacy filter decides
    if dxo.data_kind in (DataKind.WEIGHT_DIFF, DataKind.WEIGHTS) and isinstance(dxo.data, dict):
        dxo.data = to_numpy(dxo.data, who)
        if dxo.data_kind == DataKind.WEIGHT_DIFF:
            samples_from_steps(executor, fl_ctx, dxo)
    elif dxo.data_kind == DataKind.METRICS:
        try:
            checked = clean_nested_metrics(dxo.data)
        except ValueError as exc:
            raise UserCodeError(f"{who} returned metrics that cannot leave the site: {exc}") from exc
        if checked.problems:
            raise UserCodeError(
                f"{who} returned metrics that cannot leave the site: {checked.problems[0]} (only "
                "numbers, in dicts and lists, leave a site)"
            )
        for line in checked.notes(f"{task_name} metrics"):
            executor.log_warning(fl_ctx, line)
        dxo.data = checked.data
    else:
        return reply
    dxo.update_shareable(reply)
    return reply


class FlipExecutorApp:
    """A FLIP app whose class subclasses NVFlare's ``Executor`` (flip-fl-base's contract).

    The class is built once, at the first task, with FLIP's keywords (e.g. ``train_task_name``,
    ``submit_model_task_name``, ``exclude_vars``, ``project_id``, ``query``); every task the executor receives is
    delegated to its ``execute`` (routing tasks is the app's job, as in FLIP).
    """

    kind = FLIP_EXECUTOR

    def __init__(self, cls: type, user_file: str, keywords: dict[str, Any], custom_dir: Path):
        self.cls = cls
        self.user_file = user_file
        self.keywords = dict(keywords)
        self.custom_dir = custom_dir
        self.user: Executor | None = None

    @property
    def shown(self) -> str:
        return f"{display_path(self.user_file)}: {self.cls.__name__}"

    def build(self) -> Executor:
        """The app's Executor, built once (a constructor that raised is tried again at the next task)."""
        if self.user is None:
            names = ", ".join(f"{k}=..." for k in self.keywords)
            self.user = call_user(f"{self.shown}({names})", self.cls, custom_dir=self.custom_dir, **self.keywords)
        return self.user

    def execute(
        self, executor, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        user = self.build()
        who = f"{self.shown}.execute({task_name!r})"
        reply = call_user(who, user.execute, task_name, shareable, fl_ctx, abort_signal, custom_dir=self.custom_dir)
        return finish_reply(executor, fl_ctx, task_name, reply, who)


class ClientAlgoApp:
    """A FLIP app whose class subclasses MONAI FL's ``ClientAlgo`` (FLIP's MONAI FL adapters' contract).

    Built once with FLIP's keywords (``project_id``, ``query`` and the task name), then ``initialize({"fl_ctx"})``
    once. Per task (the executor's :meth:`algo_tasks` maps task names to what they do):

    - train: ``train(ExchangeObject(weights, WEIGHTS, statistics={"current_round"}), {"fl_ctx", "abort_signal",
      "current_round"})`` then ``get_weights({"fl_ctx", "weight_type": WEIGHT_DIFF})``: a WEIGHT_DIFF (or what the
      ExchangeObject's ``weight_type`` says) with ``NUM_STEPS_CURRENT_ROUND`` = ``statistics["num_steps"]`` (or
      MONAI's ``num_executed_iterations``, else 1);
    - submit: ``get_weights({"fl_ctx", "weight_type": WEIGHTS})``;
    - evaluate: ``evaluate(ExchangeObject(weights=...), {"fl_ctx", "abort_signal"})`` -> its ``metrics`` as a
      METRICS DXO; for FLIP's evaluation task the weights are ``{model_name: DXO(WEIGHTS)}``.
    """

    kind = CLIENT_ALGO

    def __init__(self, cls: type, user_file: str, keywords: dict[str, Any], custom_dir: Path, executor):
        self.cls = cls
        self.user_file = user_file
        self.keywords = dict(keywords)
        self.custom_dir = custom_dir
        self.tasks: dict[str, str] = executor.algo_tasks()
        self.algo = None

    @property
    def shown(self) -> str:
        return f"{display_path(self.user_file)}: {self.cls.__name__}"

    def build(self, fl_ctx: FLContext):
        """The app's ClientAlgo, built and initialized once (a failure is tried again at the next task)."""
        if self.algo is None:
            names = ", ".join(f"{k}=..." for k in self.keywords)
            algo = call_user(f"{self.shown}({names})", self.cls, custom_dir=self.custom_dir, **self.keywords)
            call_user(f"{self.shown}.initialize", algo.initialize, {"fl_ctx": fl_ctx}, custom_dir=self.custom_dir)
            self.algo = algo
        return self.algo

    def _call(self, method: str, *args) -> Any:
        return call_user(f"{self.shown}.{method}", getattr(self.algo, method), *args, custom_dir=self.custom_dir)

    def execute(
        self, executor, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal
    ) -> Shareable:
        from monai.fl.utils.constants import WeightType

        action = self.tasks.get(task_name)
        if action is None:
            executor.log_error(
                fl_ctx, f"{type(executor).__name__} cannot run task {task_name!r} (it runs {sorted(self.tasks)})"
            )
            return make_reply(ReturnCode.TASK_UNKNOWN)
        self.build(fl_ctx)
        if action == TRAIN:
            data, current_round = self._exchange_in(shareable, task_name)
            self._call("train", data, {"fl_ctx": fl_ctx, "abort_signal": abort_signal, "current_round": current_round})
            if abort_signal.triggered:
                return make_reply(ReturnCode.TASK_ABORTED)
            out = self._call("get_weights", {"fl_ctx": fl_ctx, "weight_type": WeightType.WEIGHT_DIFF})
            return finish_reply(executor, fl_ctx, task_name, self._weights_reply(out), f"{self.shown}.get_weights")
        if action == SUBMIT:
            out = self._call("get_weights", {"fl_ctx": fl_ctx, "weight_type": WeightType.WEIGHTS})
            return finish_reply(executor, fl_ctx, task_name, self._weights_reply(out), f"{self.shown}.get_weights")
        data, _ = self._exchange_in(shareable, task_name, collection=True)
        out = self._call("evaluate", data, {"fl_ctx": fl_ctx, "abort_signal": abort_signal})
        if abort_signal.triggered:
            return make_reply(ReturnCode.TASK_ABORTED)
        if not _is_exchange(out):
            raise UserCodeError(f"{self.shown}.evaluate returned a {type(out).__name__}: expected an ExchangeObject")
        reply = DXO(data_kind=DataKind.METRICS, data=out.metrics or {}).to_shareable()
        return finish_reply(executor, fl_ctx, task_name, reply, f"{self.shown}.evaluate")

    def _exchange_in(self, shareable: Shareable, task_name: str, collection: bool = False):
        """The task's weights as MONAI's ExchangeObject, and the task's round (0-based)."""
        from monai.fl.utils.constants import WeightType
        from monai.fl.utils.exchange_object import ExchangeObject

        try:
            dxo = from_shareable(shareable)
        except (ValueError, TypeError, KeyError) as exc:
            raise TaskFailed(f"the {task_name} task carried no model ({type(exc).__name__})") from exc
        kinds = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF) + ((DataKind.COLLECTION,) if collection else ())
        if dxo.data_kind not in kinds or not isinstance(dxo.data, dict):
            raise TaskFailed(
                f"the {task_name} task carried {getattr(dxo.data_kind, 'value', dxo.data_kind)}: "
                f"expected {' or '.join(getattr(k, 'value', k) for k in kinds)}"
            )
        current_round = shareable.get_header(AppConstants.CURRENT_ROUND, 0) or 0
        data = ExchangeObject(
            weights=dxo.data, weight_type=WeightType.WEIGHTS, statistics={"current_round": current_round}
        )
        return data, current_round

    def _weights_reply(self, out: Any) -> Shareable:
        """A WEIGHT_DIFF or WEIGHTS DXO from what ``get_weights`` returned."""
        from monai.fl.utils.constants import FlStatistics, WeightType

        who = f"{self.shown}.get_weights"
        if not _is_exchange(out):
            raise UserCodeError(f"{who} returned a {type(out).__name__}: expected an ExchangeObject")
        kind = DataKind.WEIGHT_DIFF if out.weight_type == WeightType.WEIGHT_DIFF else DataKind.WEIGHTS
        statistics = out.statistics or {}
        steps = statistics.get("num_steps", statistics.get(FlStatistics.NUM_EXECUTED_ITERATIONS, 1))
        return DXO(
            data_kind=kind, data=to_numpy(out.weights, who), meta={MetaKey.NUM_STEPS_CURRENT_ROUND: steps}
        ).to_shareable()


def _is_exchange(value: Any) -> bool:
    from monai.fl.utils.exchange_object import ExchangeObject

    return isinstance(value, ExchangeObject)
