"""FLIP_TRAINER (FLIP's Executor contract): the CNN on the cohort's DICOM studies, with per-class metrics."""

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
from nvflare.app_common.app_constant import AppConstants
from scores import per_class_scores
from torch.utils.data import DataLoader

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value
from flip.utils import get_model_weights_diff


class FLIP_TRAINER(Executor):
    def __init__(
        self, train_task_name="train", submit_model_task_name="submit_model", exclude_vars=None, project_id="", query=""
    ):
        super().__init__()
        self._train_task_name = train_task_name
        self._submit_model_task_name = submit_model_task_name
        self._exclude_vars = exclude_vars
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self._epochs = self.config["LOCAL_ROUNDS"]
        self.classes = self.config["CLASSES"]
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.dataframe = self.flip.get_dataframe(self.project_id, self.query)
        self.model = get_model()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config["LEARNING_RATE"], momentum=0.9)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def get_num_epochs(self):
        return self._epochs

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name == self._train_task_name:
            return self.train(shareable, fl_ctx, abort_signal)
        if task_name == self._submit_model_task_name:
            weights = {k: v.cpu().numpy() for k, v in self.model.state_dict().items()}
            return DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def train(self, shareable, fl_ctx, abort_signal):
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        global_weights = dxo.data
        global_round = shareable.get_header(AppConstants.CURRENT_ROUND) or 0
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in global_weights.items()})
        train_items, val_items = split_items(
            cohort_items(self.flip, self.project_id, self.dataframe), self.config["VAL_SPLIT"]
        )
        train_loader = DataLoader(
            DicomDataset(train_items), batch_size=self.config["BATCH_SIZE"], shuffle=True, num_workers=1
        )
        val_loader = DataLoader(DicomDataset(val_items), batch_size=self.config["BATCH_SIZE"], num_workers=1)
        steps = 0
        for epoch in range(self._epochs):
            x = global_round * self._epochs + epoch + 1
            self.model.train()
            losses, labels, predictions = [], [], []
            for images, targets in train_loader:
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                self.optimizer.zero_grad()
                logits = self.model(images)
                loss = self.loss_fn(logits, targets)
                loss.backward()
                self.optimizer.step()
                steps += 1
                losses.append(loss.item())
                labels += targets.tolist()
                predictions += logits.argmax(1).tolist()
            send_metrics_value("TRAIN_LOSS", sum(losses) / len(losses), fl_ctx, round=x, flip=self.flip)
            for metric, values in per_class_scores(labels, predictions, len(self.classes)).items():
                for value in values:  # one value per class, under the same label (NaN where undefined)
                    send_metrics_value(f"TRAIN-{metric.upper()}", value, fl_ctx, round=x, flip=self.flip)
            self.model.eval()
            with torch.no_grad():
                val_loss = [self.loss_fn(self.model(images), targets).item() for images, targets in val_loader]
            send_metrics_value("VAL_LOSS", sum(val_loss) / len(val_loss), fl_ctx, round=x, flip=self.flip)
        return get_model_weights_diff(global_weights, self.model.state_dict(), steps).to_shareable()
