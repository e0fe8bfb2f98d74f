"""RUN_TRAINER: run the user's FLIP_TRAINER on the global model and send back a weight difference."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, MetaKey
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.checks import check_component_id, check_regex
from flip.constants import FlipMeta, FlipProp, FlipTask, UserFile
from flip.errors import TaskFailed, UserCodeError
from flip.methods import swag
from flip.methods.fedprox import proximal_term
from flip.methods.swag import DEVIATION, MEAN
from flip.methods.weighted import as_tensor, checksum, l2_norm
from flip.metrics import NUM_SAMPLES, NUM_STEPS, clean_metrics
from flip.nvflare.components.site_privacy_policy import site_policy
from flip.nvflare.executors.base import UserCodeExecutor, call_user, check_task_name
from flip.nvflare.executors.user_code import display_path, load_module
from flip.nvflare.models import state_to_numpy

#: FLIP's name for the task that asks a site for its local model (NVFlare's AppConstants.TASK_SUBMIT_MODEL)
SUBMIT_MODEL = "submit_model"


def check_exclude_vars(value: Any) -> Any:
    """Return FLIP's ``exclude_vars`` if it is None, a regular expression or a list of parameter names."""
    if isinstance(value, list):
        if not all(isinstance(v, str) and v for v in value):
            raise ValueError(f"exclude_vars must be None, a regular expression or a list of names, got {value!r}")
        return value
    return check_regex("exclude_vars", value)


def training_result(raw: dict, where: str) -> tuple[int, int, dict]:
    """Split what ``train`` returned into (num_samples, num_steps, metrics), all checked."""
    metrics = clean_metrics(raw, where)
    num_samples = metrics.pop(NUM_SAMPLES, None)
    if not isinstance(num_samples, int) or num_samples <= 0:
        raise UserCodeError(f"{where} must return 'num_samples', a positive integer (the samples trained on)")
    num_steps = metrics.pop(NUM_STEPS, 1)
    if not isinstance(num_steps, int) or num_steps <= 0:
        raise UserCodeError(f"{where} returned 'num_steps' {num_steps!r}: expected a positive integer")
    return num_samples, num_steps, metrics


def weight_difference(model: torch.nn.Module, received: dict, names: list[str]) -> dict[str, np.ndarray]:
    """``model``'s entries ``names`` minus the ``received`` ones, each in the model entry's dtype, as numpy arrays
    (taken by torch, on the CPU: the same values as numpy's ``(new - received).astype(new.dtype)``)."""
    state = model.state_dict()
    diff = {}
    with torch.no_grad():
        for name in names:
            new = state[name].detach().cpu()
            diff[name] = (new - as_tensor(received[name])).to(new.dtype).numpy()
    return diff


class RUN_TRAINER(UserCodeExecutor):  # noqa: N801 - FLIP's documented executor name
    """Train the received global model with the user's ``trainer.py`` and reply with ΔW.

    The user's ``FLIP_TRAINER`` decides the contract (flip.nvflare.executors.base):

    - a subclass of NVFlare's ``Executor`` (a FLIP app, flip-fl-base's contract): built once as
      ``FLIP_TRAINER(train_task_name=, submit_model_task_name=, exclude_vars=, project_id=, query=)`` and every
      task delegated to its ``execute`` (flip.nvflare.executors.flip_apps.FlipExecutorApp);
    - a subclass of MONAI's ``ClientAlgo``: driven as RUN_MONAI_FL_TRAINER drives it;
    - otherwise our plain contract, below.

    Plain contract: receives WEIGHTS (the global model), loads them into ``models.get_model()``, calls
    ``FLIP_TRAINER(config).train(model, ctx)`` and replies with a WEIGHT_DIFF DXO (new − received, for every
    floating-point entry received) so the site's privacy filter sees the difference, never the full model.
    The DXO meta carries ``NUM_STEPS_CURRENT_ROUND`` (the trainer's ``num_steps``) and the number of samples;
    the trainer's metrics go to the ClientEventHandler, which sends them with the result. Integer buffers (e.g.
    BatchNorm's counters) are not exchanged. It serves ``train_task_name`` and ``swag``.

    - FedProx: when the task carries ``flip_fedprox_mu``, the proximal term ``mu/2·||w − w_global||²`` is added
      to the user's loss through the gradients while ``train`` runs (user code unchanged).
    - Multi-stage: the task carries its stage (``ctx.stage``); ``models.py`` then defines
      ``STAGES = {stage: [parameter name prefixes]}`` and only the stage's parameters are sent (DXO meta
      ``flip_stage``), for StagePercentilePrivacy to filter with the stage's own threshold.
    - SWAG (task ``swag``): ``train`` is called ``flip_swag_epochs`` times from the global model; the reply is a
      COLLECTION of the snapshots' mean (as a difference to the global model) and each weight's standard deviation
      around it (flip.methods.swag), each filtered by the site's privacy filter.

    Differential privacy: at a site whose own policy (``SitePrivacyPolicy`` in its ``local/privacy.json``) asks for
    it, every training task, whatever the contract, runs inside the policy's ``training``: the job is admitted
    against the site's privacy ledger first (refused, naming the budget left, before the user's code runs), the
    user's training goes through ``make_private`` (our plain contract: made by the runner around the unchanged
    ``train``, flip.privacy.automatic, unless it calls ``ctx.make_private``; FLIP's contracts:
    ``flip.utils.make_private(model, optimizer, data_loader, fl_ctx)``), and a task that did not train privately
    fails (nothing is sent). The update's ``update_norm`` is measured after the filters (ClientEventHandler).

    Args:
        train_task_name: the training task's name (FLIP's multi-stage jobs: ``train_ae``, ``train_dm``). Default
            ``train``.
        submit_model_task_name: FLIP's name for the task that asks for the local model (given to a FLIP app).
            Default ``submit_model``.
        exclude_vars: given to a FLIP app (FLIP's argument: parameters it leaves out). Default None.
        project_id, query: FLIP's project and cohort query, given to a FLIP app. Default "".

    Raises:
        ValueError: a task name that is not a name, or project_id/query that is not a string (named).
    """

    where = f"{display_path(UserFile.TRAINER)}: {UserFile.TRAINER_CLASS}.train"
    user_file, user_class = UserFile.TRAINER, UserFile.TRAINER_CLASS
    plain_methods = ("train",)

    def __init__(
        self,
        train_task_name: str = FlipTask.TRAIN,
        submit_model_task_name: str = SUBMIT_MODEL,
        exclude_vars: Any = None,
        project_id: str = "",
        query: str = "",
    ):
        super().__init__(project_id=project_id, query=query)
        self.train_task_name = check_task_name("train_task_name", train_task_name)
        self.submit_model_task_name = check_component_id("submit_model_task_name", submit_model_task_name, empty=True)
        self.exclude_vars = check_exclude_vars(exclude_vars)
        self.tasks = tuple(dict.fromkeys((self.train_task_name, FlipTask.SWAG)))

    def flip_keywords(self) -> dict[str, Any]:
        return {
            "train_task_name": self.train_task_name,
            "submit_model_task_name": self.submit_model_task_name,
            "exclude_vars": self.exclude_vars,
            "project_id": self.project_id,
            "query": self.query,
        }

    def monai_keywords(self) -> dict[str, Any]:
        return {"project_id": self.project_id, "query": self.query, "train_task_name": self.train_task_name}

    def monai_methods(self) -> tuple[str, ...]:
        return ("initialize", "train", "get_weights")

    def algo_tasks(self) -> dict[str, str]:
        """What each task does to a MONAI ClientAlgo: train, or submit (its full weights)."""
        tasks = {self.train_task_name: "train"}
        if self.submit_model_task_name:
            tasks[self.submit_model_task_name] = "submit"
        return tasks

    def _execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        policy = site_policy(fl_ctx)
        if policy is None or task_name not in (self.train_task_name, FlipTask.SWAG):
            return super()._execute(task_name, shareable, fl_ctx, abort_signal)
        total_rounds = int(shareable.get_header(AppConstants.NUM_ROUNDS, 1) or 1)
        try:
            with policy.training(fl_ctx, self.project_id, total_rounds) as task:
                reply = super()._execute(task_name, shareable, fl_ctx, abort_signal)
                task.ok = isinstance(reply, Shareable) and reply.get_return_code(ReturnCode.OK) == ReturnCode.OK
        except TaskFailed as exc:
            return self.failure(fl_ctx, task_name, exc.reason, None)
        return reply

    def run_task(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        # the user's class first: a missing or broken FLIP_TRAINER is the cause to name, not the data it never read
        trainer = self.user_instance(UserFile.TRAINER, UserFile.TRAINER_CLASS, "train")
        ctx = self.context(fl_ctx, shareable, abort_signal)
        global_weights, model = self.model_from_task(task_name, shareable, ctx.device, ctx.site_name)
        names = [n for n, v in global_weights.items() if np.asarray(v).dtype.kind == "f"]
        policy = site_policy(fl_ctx)
        # under record-level DP-SGD, a trainer that does not call ctx.make_private is made private by the runner
        private = policy.automatic(model, ctx.config, ctx.stage, trainer, fl_ctx) if policy is not None else None
        with private or nullcontext():
            if task_name == FlipTask.SWAG:
                return self._swag(fl_ctx, shareable, ctx, trainer, model, global_weights, names, abort_signal)
            started = time.monotonic()
            mu = float(shareable.get_header(FlipMeta.FEDPROX_MU) or 0.0)
            # under record-level DP-SGD the term follows the private gradient
            with proximal_term(model, mu, dp_session=policy.session if policy is not None else None):
                raw = call_user(self.where, trainer.train, model, ctx)
        if abort_signal.triggered:
            return Shareable()
        num_samples, num_steps, metrics = training_result(raw, self.where)
        diff = weight_difference(model, global_weights, names)
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: num_steps, FlipMeta.NUM_SAMPLES: num_samples}
        if ctx.stage:
            diff = self._stage_part(fl_ctx, ctx.stage, diff)
            meta[FlipMeta.STAGE] = ctx.stage
        norm = l2_norm(diff.values())  # before the filters: for this site's log only (what leaves is measured after)
        if shareable.get_header(FlipMeta.REPORT_CHECKSUM):
            metrics["received_checksum"] = checksum(global_weights)
        # the ClientEventHandler checks these and sends them with the result (see ClientEventHandler)
        fl_ctx.set_prop(FlipProp.TASK_METRICS, {NUM_SAMPLES: num_samples, **metrics}, private=True, sticky=False)
        summary = " ".join(
            f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float) and k != "received_checksum"
        )
        stage = f" (stage {ctx.stage})" if ctx.stage else ""
        prox = f", FedProx mu={mu:g}" if mu else ""
        self.log_info(
            fl_ctx,
            f"round {ctx.round + 1}/{ctx.total_rounds}{stage}: trained on {num_samples} samples, {num_steps} steps in "
            f"{time.monotonic() - started:.2f} s{prox}; {summary} update norm before the filters {norm:.4g}",
        )
        return DXO(data_kind=DataKind.WEIGHT_DIFF, data=diff, meta=meta).to_shareable()

    def _swag(self, fl_ctx, shareable, ctx, trainer, model, global_weights, names, abort_signal) -> Shareable:
        epochs = int(shareable.get_header(FlipMeta.SWAG_EPOCHS) or 3)
        snapshots, steps, samples = [], 0, 0
        for _ in range(epochs):
            raw = call_user(self.where, trainer.train, model, ctx)
            if abort_signal.triggered:
                return Shareable()
            num_samples, num_steps, _ = training_result(raw, self.where)
            samples, steps = max(samples, num_samples), steps + num_steps
            snapshots.append(state_to_numpy(model, names))
        mean, deviation = swag.site_moments(snapshots, {n: global_weights[n] for n in names})
        meta = {MetaKey.NUM_STEPS_CURRENT_ROUND: steps}
        parts = {
            MEAN: DXO(DataKind.WEIGHT_DIFF, data=mean, meta=dict(meta)),
            DEVIATION: DXO(DataKind.WEIGHT_DIFF, data=deviation, meta=dict(meta)),
        }
        self.log_info(fl_ctx, f"SWAG: {epochs} snapshots over {steps} steps on {samples} samples")
        return DXO(DataKind.COLLECTION, data=parts, meta={FlipMeta.NUM_SAMPLES: samples}).to_shareable()

    def _stage_part(self, fl_ctx: FLContext, stage: str, diff: dict) -> dict:
        """Only the stage's parameters (``STAGES[stage]`` name prefixes in models.py) leave the site."""
        stages = getattr(
            load_module(self.custom_dir, UserFile.MODELS, "STAGES = {stage: [parameter prefixes]}"), "STAGES", None
        )
        if not isinstance(stages, dict) or stage not in stages:
            known = sorted(stages) if isinstance(stages, dict) else "none"
            raise UserCodeError(
                f"{display_path(UserFile.MODELS)} must define STAGES = "
                f"{{stage: [parameter name prefixes]}} with stage {stage!r} (defined: {known})"
            )
        prefixes = tuple(stages[stage])
        part = {n: d for n, d in diff.items() if n.startswith(prefixes)}
        if not part:
            raise UserCodeError(
                f"{display_path(UserFile.MODELS)}: STAGES[{stage!r}] = {list(prefixes)} matches no parameter"
            )
        moved = [n for n, d in diff.items() if n not in part and np.any(d)]
        if moved:
            self.log_warning(
                fl_ctx,
                f"stage {stage}: {len(moved)} parameters outside the stage changed (e.g. "
                f"{moved[0]!r}); they are not sent: freeze them in the trainer",
            )
        return part
