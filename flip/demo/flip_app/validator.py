"""FLIP_VALIDATOR, FLIP's Executor contract: a model's accuracy and loss on this site's validation images."""

import json
from pathlib import Path

import torch
from digits_dicom import load_cohort, train_val_split
from models import get_model
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip import FLIP


class FLIP_VALIDATOR(Executor):
    def __init__(self, validate_task_name="validate", project_id="", query=""):
        super().__init__()
        self._validate_task_name = validate_task_name
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.dataframe = self.flip.get_dataframe(self.project_id, self.query)
        self.data = None

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self._validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        if self.data is None:
            images, labels = load_cohort(self.flip, self.project_id, self.dataframe)
            _, _, x_val, y_val = train_val_split(images, labels, int(self.config["VALIDATE_EVERY"]))
            self.data = (x_val, y_val)
        x_val, y_val = self.data
        model = get_model()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in dxo.data.items()})
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        metrics = {
            "accuracy": (logits.argmax(1) == y_val).float().mean().item(),
            "loss": torch.nn.functional.cross_entropy(logits, y_val).item(),
            "num_samples": len(y_val),
        }
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()
