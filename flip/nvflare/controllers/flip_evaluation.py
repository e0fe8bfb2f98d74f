"""FlipEvaluation: FLIP's evaluation job: every site evaluates the app's checkpoints, sent once as a COLLECTION."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from nvflare.apis.controller_spec import ClientTask, Task
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.checks import check_component_id, check_object_key, check_positive_int
from flip.constants import FlipEvent, FlipProp, PTConstants, UserFile
from flip.errors import FlipError, UserCodeError
from flip.nvflare.controllers.base import FlipController
from flip.nvflare.executors.user_code import display_path, load_config, load_module
from flip.nvflare.utils import app_custom_dir

#: config.json's key naming the models to evaluate, and each model's two keys
MODELS_KEY, CHECKPOINT, PATH = "models", "checkpoint", "path"
#: models.py's mapping of a model's "path" to the torch module its checkpoint is loaded into
MODEL_PATHS = "model_paths"


def _state_dict(loaded: Any, where: str) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint: the file's dict of tensors, or NVFlare's ``{"model": state_dict, ...}``."""
    if (
        isinstance(loaded, dict)
        and isinstance(loaded.get("model"), dict)
        and not any(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        loaded = loaded["model"]
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise UserCodeError(f"{where} does not hold a state dict (names to tensors)")
    return loaded


def _first_mismatch(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not load strictly into ``module``, naming the first key (None: it does)."""
    expected = module.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            return f"the model's entry {name!r} is not in the checkpoint"
        if tuple(state[name].shape) != tuple(tensor.shape):
            return (
                f"entry {name!r} has shape {tuple(state[name].shape)} in the checkpoint, the model expects "
                f"{tuple(tensor.shape)}"
            )
    extra = next((name for name in state if name not in expected), None)
    return None if extra is None else f"the checkpoint's entry {extra!r} is not in the model"


def load_evaluation_models(custom_dir: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every model of ``config.json["models"]`` (``{name: {"checkpoint": file, "path": key}}``): its checkpoint,
    a file in ``custom_dir``, loaded with ``torch.load(weights_only=True)`` strictly into
    ``models.model_paths[path]``; returned as ``{name: {entry: numpy array}}`` (every state dict entry).

    Raises:
        UserCodeError: config.json, models.py or a checkpoint is missing or malformed, or a checkpoint does not fit
            its model (naming the model and the first key).
    """
    config = load_config(custom_dir)
    models = config.get(MODELS_KEY)
    shown = display_path(UserFile.CONFIG)
    if not isinstance(models, dict) or not models:
        raise UserCodeError(
            f'{shown} must hold "{MODELS_KEY}": {{name: {{"{CHECKPOINT}": file, "{PATH}": '
            f"key of models.{MODEL_PATHS}}}}} with at least one model"
        )
    paths = getattr(
        load_module(custom_dir, UserFile.MODELS, f"{MODEL_PATHS} = {{key: torch.nn.Module}}"), MODEL_PATHS, None
    )
    if not isinstance(paths, dict):
        raise UserCodeError(f"{display_path(UserFile.MODELS)} must define {MODEL_PATHS} = {{key: torch.nn.Module}}")
    weights: dict[str, dict[str, np.ndarray]] = {}
    for name, entry in models.items():
        where = f"{shown} model {name!r}"
        if not isinstance(entry, dict) or not {CHECKPOINT, PATH} <= set(entry):
            raise UserCodeError(f'{where} must be {{"{CHECKPOINT}": file, "{PATH}": key}}, got {entry!r}')
        try:
            check_component_id(f"{where} name", name)
            file = check_object_key(entry[CHECKPOINT])
        except ValueError as exc:
            raise UserCodeError(f"{where}: {exc}") from None
        module = paths.get(entry[PATH])
        if not isinstance(module, torch.nn.Module):
            raise UserCodeError(
                f"{where}: models.{MODEL_PATHS}[{entry[PATH]!r}] is not a torch.nn.Module "
                f"(it holds {sorted(map(str, paths))})"
            )
        path = Path(custom_dir) / file
        if not path.is_file():
            raise UserCodeError(f"{where}: checkpoint {display_path(file)} not found")
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
            raise UserCodeError(
                f"{where}: checkpoint {display_path(file)} cannot be loaded with weights_only=True "
                f"({type(exc).__name__})"
            ) from exc
        state = _state_dict(loaded, f"{where}: checkpoint {display_path(file)}")
        mismatch = _first_mismatch(module, state)
        if mismatch:
            raise UserCodeError(
                f"{where}: checkpoint {display_path(file)} does not fit models.{MODEL_PATHS}"
                f"[{entry[PATH]!r}]: {mismatch}"
            )
        module.load_state_dict(state, strict=True)
        weights[name] = {
            k: (v.float() if v.dtype == torch.bfloat16 else v).detach().cpu().numpy().copy()
            for k, v in module.state_dict().items()
        }
    return weights


class FlipEvaluation(FlipController):
    """FLIP's evaluation job: every site evaluates the app's model checkpoints; no training.

    At start it reads ``config.json`` ``"models"`` (``{name: {"checkpoint": file, "path": key}}``) from the
    *server* app's custom folder, loads each checkpoint with ``torch.load(weights_only=True)`` strictly into
    ``models.model_paths[path]`` (a mismatch ends the run in ERROR naming the model and the first key), then sends
    one ``evaluation`` task carrying a COLLECTION DXO ``{name: DXO(WEIGHTS)}`` to every site (FLIP's
    RUN_EVALUATOR / RUN_MONAI_FL_EVALUATOR hand it to the app's evaluator). Each site's METRICS reply
    (``{model_name: metrics}``, nested as the app built it) goes to the EvaluationJsonGenerator, which writes
    ``{site: reply}`` (uploaded as ``results/evaluation_results.json``). The checkpoints stay on the server (the
    job deploys them in the server app only). Fewer than ``min_clients`` successful replies end the run in ERROR.

    Args:
        min_clients: sites that must evaluate (>= 1). Default 1.
        timeout: seconds for the task (>= 1). Default 600.
        evaluate_task_name: the task's name. Default ``evaluation`` (FLIP's).
        wait_time_after_min_received: seconds to wait for the other sites once min_clients answered (>= 0).
            Default 60.

    Raises:
        ValueError: an argument out of range (named).
    """

    def __init__(
        self,
        min_clients: int = 1,
        timeout: int = 600,
        evaluate_task_name: str = PTConstants.EvalTaskName,
        wait_time_after_min_received: int = 60,
    ):
        super().__init__()
        self.min_clients = check_positive_int("min_clients", min_clients)
        self.timeout = check_positive_int("timeout", timeout)
        self.evaluate_task_name = check_component_id("evaluate_task_name", evaluate_task_name)
        self.wait_time_after_min_received = check_positive_int(
            "wait_time_after_min_received", wait_time_after_min_received, minimum=0
        )
        self._ok: set[str] = set()
        self._names: list[str] = []

    def start_controller(self, fl_ctx: FLContext) -> None:
        clients = self._engine.get_clients()
        if len(clients) < self.min_clients:
            self.system_panic(
                f"FlipEvaluation: min_clients is {self.min_clients} but only {len(clients)} sites joined the run",
                fl_ctx,
            )

    def control_flow(self, abort_signal: Signal, fl_ctx: FLContext) -> None:
        try:
            models = load_evaluation_models(app_custom_dir(fl_ctx))
        except FlipError as exc:
            self.system_panic(f"FlipEvaluation: {exc}", fl_ctx)
            return
        self._names = sorted(models)
        self.log_info(fl_ctx, f"evaluating {len(models)} model(s) at every site: {', '.join(self._names)}")
        self.fire_event(FlipEvent.EVALUATION_STARTED, fl_ctx)
        collection = DXO(
            data_kind=DataKind.COLLECTION,
            data={name: DXO(data_kind=DataKind.WEIGHTS, data=w) for name, w in models.items()},
        )
        task = Task(
            name=self.evaluate_task_name,
            data=collection.to_shareable(),
            timeout=self.timeout,
            result_received_cb=self._result_received,
        )
        self.broadcast_and_wait(
            task=task,
            fl_ctx=fl_ctx,
            min_responses=self.min_clients,
            wait_time_after_min_received=self.wait_time_after_min_received,
            abort_signal=abort_signal,
        )
        if abort_signal.triggered:
            return
        if len(self._ok) < self.min_clients:
            self.system_panic(
                f"the models were evaluated by {len(self._ok)} sites, fewer than min_clients ({self.min_clients})",
                fl_ctx,
            )
            return
        self.log_info(fl_ctx, f"evaluated at {', '.join(sorted(self._ok))}")

    def _result_received(self, client_task: ClientTask, fl_ctx: FLContext) -> None:
        self.record_result(client_task.client.name, client_task.result, fl_ctx)
        client_task.result = None

    def record_result(self, site: str, result: Any, fl_ctx: FLContext) -> bool:
        """Hand one site's reply to the EvaluationJsonGenerator (event ``flip.evaluation_result_received`` with
        ``flip.evaluation_reply``); return whether the site evaluated (an OK reply)."""
        if not isinstance(result, Shareable) or result.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            rc = result.get_return_code(ReturnCode.OK) if isinstance(result, Shareable) else "no reply"
            self.log_error(fl_ctx, f"site {site} could not evaluate the models ({rc})")
            return False
        self._ok.add(site)
        fl_ctx.set_prop(AppConstants.DATA_CLIENT, site, private=True, sticky=False)
        fl_ctx.set_prop(FlipProp.EVALUATION_REPLY, result, private=True, sticky=False)
        self.fire_event(FlipEvent.EVALUATION_RESULT_RECEIVED, fl_ctx)
        fl_ctx.set_prop(FlipProp.EVALUATION_REPLY, None, private=True, sticky=False)
        return True
