"""RUN_VALIDATOR: evaluate a model sent by the server with the user's FLIP_VALIDATOR."""

from __future__ import annotations

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.signal import Signal
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipTask, UserFile
from flip.errors import UserCodeError
from flip.metrics import clean_metrics
from flip.nvflare.executors.base import TaskFailed, UserCodeExecutor, call_user
from flip.nvflare.executors.user_code import instantiate, load_class
from flip.nvflare.models import load_weights


class RUN_VALIDATOR(UserCodeExecutor):  # noqa: N801 - FLIP's documented executor name
    """Load the received model into ``models.get_model()`` and reply with ``FLIP_VALIDATOR.validate``'s metrics.

    Serves NVFlare's cross-site validation task (``validate``): the reply is a METRICS DXO.
    """

    tasks = (FlipTask.VALIDATE,)

    def run_task(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        try:
            incoming = from_shareable(shareable)
        except ValueError as exc:
            raise TaskFailed(f"the validate task carried no model: {exc}") from exc
        if incoming.data_kind != DataKind.WEIGHTS or not isinstance(incoming.data, dict):
            raise TaskFailed(f"the validate task carried {incoming.data_kind}: expected WEIGHTS")
        owner = shareable.get_header(AppConstants.MODEL_OWNER, "model")
        ctx = self.context(fl_ctx, shareable, abort_signal)
        validator = self.user_object("validator", lambda: instantiate(
            load_class(self.custom_dir, UserFile.VALIDATOR, UserFile.VALIDATOR_CLASS, ("validate",)), self.config,
            UserFile.VALIDATOR))
        model = self.new_model()
        try:
            load_weights(model, incoming.data, f"model {owner}")
        except ValueError as exc:
            raise UserCodeError(f"custom/{UserFile.MODELS}: get_model() does not fit {owner}: {exc}") from exc
        model.to(ctx.device)
        model.eval()
        where = f"custom/{UserFile.VALIDATOR}: {UserFile.VALIDATOR_CLASS}.validate"
        metrics = clean_metrics(call_user(where, validator.validate, model, ctx), where)
        self.log_info(fl_ctx, f"validated {owner}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()
