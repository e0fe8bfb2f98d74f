"""FLIP_VALIDATOR (FLIP's Executor contract): test loss and per-class scores of a model, as a nested dict of lists."""

import json
from pathlib import Path

import torch
from data_utils import DicomDataset, cohort_items, split_items
from models import get_model
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal
from scores import per_class_scores
from torch.utils.data import DataLoader

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value


class FLIP_VALIDATOR(Executor):
    def __init__(self, validate_task_name="validate", project_id="", query=""):
        super().__init__()
        self._validate_task_name = validate_task_name
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self.classes = self.config["CLASSES"]
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.dataframe = self.flip.get_dataframe(self.project_id, self.query)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self._validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        model = get_model()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in dxo.data.items()})
        model.eval()
        _, val_items = split_items(cohort_items(self.flip, self.project_id, self.dataframe), self.config["VAL_SPLIT"])
        losses, labels, predictions = [], [], []
        with torch.no_grad():
            for images, targets in DataLoader(DicomDataset(val_items), batch_size=4, num_workers=1):
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                logits = model(images)
                losses.append(torch.nn.functional.cross_entropy(logits, targets).item())
                labels += targets.tolist()
                predictions += logits.argmax(1).tolist()
        scores = per_class_scores(labels, predictions, len(self.classes))
        send_metrics_value("TEST_LOSS", losses[-1], fl_ctx, round=0, flip=self.flip)
        for metric, values in scores.items():
            for value in values:
                send_metrics_value(f"TEST-{metric.upper()}", value, fl_ctx, round=0, flip=self.flip)
        metrics = {"loss": losses}
        for metric, values in scores.items():
            metrics[metric] = {self.classes[str(c)]: [float(v)] for c, v in enumerate(values)}
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()
