"""FLIP_TRAINER, FLIP's Executor contract: trains the digits model on this site's DICOM cohort."""

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
from nvflare.app_common.app_constant import AppConstants

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value
from flip.utils import get_model_weights_diff, make_private


class FLIP_TRAINER(Executor):
    def __init__(
        self, train_task_name="train", submit_model_task_name="submit_model", exclude_vars=None, project_id="", query=""
    ):
        super().__init__()
        self._train_task_name = train_task_name
        self._submit_model_task_name = submit_model_task_name
        self._exclude_vars = exclude_vars
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self._epochs = int(self.config["LOCAL_ROUNDS"])
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.dataframe = self.flip.get_dataframe(self.project_id, self.query)
        self.model = get_model()
        self.data = None

    def get_num_epochs(self):
        return self._epochs

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name == self._train_task_name:
            return self.train(shareable, fl_ctx, abort_signal)
        if task_name == self._submit_model_task_name:
            weights = {k: v.cpu().numpy() for k, v in self.model.state_dict().items()}
            return DXO(data_kind=DataKind.WEIGHTS, data=weights).to_shareable()
        return make_reply(ReturnCode.TASK_UNKNOWN)

    def train(self, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        global_weights = dxo.data
        current_round = int(shareable.get_header(AppConstants.CURRENT_ROUND) or 0)
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in global_weights.items()})
        if self.data is None:
            images, labels = load_cohort(self.flip, self.project_id, self.dataframe)
            self.data = train_val_split(images, labels, int(self.config["VALIDATE_EVERY"]))
        x_train, y_train, x_val, y_val = self.data
        batch_size = int(self.config["BATCH_SIZE"])
        optimizer = torch.optim.SGD(self.model.parameters(), lr=float(self.config["LEARNING_RATE"]), momentum=0.9)
        loss_fn = torch.nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(1000 * current_round + 7)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, generator=generator
        )
        # under the site's record-level DP policy: Opacus's DP-SGD; elsewhere the three come back unchanged
        self.model, optimizer, loader = make_private(self.model, optimizer, loader, fl_ctx, epochs=self._epochs)
        steps, epoch_loss = 0, 0.0
        self.model.train()
        for _ in range(self._epochs):
            total = 0.0
            for images, labels in loader:
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
                optimizer.zero_grad()
                loss = loss_fn(self.model(images), labels)
                loss.backward()
                optimizer.step()  # every batch steps, an empty Poisson batch too (it adds the noise)
                total += loss.item() * len(labels) if len(labels) else 0.0
                steps += 1
            epoch_loss = total / len(y_train)
        self.model.eval()
        with torch.no_grad():
            accuracy = (self.model(x_val).argmax(1) == y_val).float().mean().item()
        send_metrics_value("loss", epoch_loss, fl_ctx, flip=self.flip)
        send_metrics_value("accuracy", accuracy, fl_ctx, flip=self.flip)
        return get_model_weights_diff(global_weights, self.model.state_dict(), steps).to_shareable()
