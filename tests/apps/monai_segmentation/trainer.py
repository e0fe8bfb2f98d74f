"""FLIP_TRAINER (MONAI FL's ClientAlgo): the UNet on the cohort's NIfTI volumes."""

import json
from pathlib import Path

import numpy as np
import torch
from flip_datasets import SegmentationDataset
from models import get_model
from monai.data import DataLoader
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import WeightType
from monai.fl.utils.exchange_object import ExchangeObject
from monai.losses import DiceLoss
from transforms import get_transforms

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value
from flip.utils import get_model_weights_diff


class FLIP_TRAINER(ClientAlgo):
    def __init__(self, project_id="", query="", train_task_name="train"):
        self.project_id = project_id
        self.query = query
        self.train_task_name = train_task_name
        self.initialized = False

    def initialize(self, extra=None):
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self.flip = FLIP()
        self.model = get_model()
        self.loss_fn = DiceLoss(to_onehot_y=True, softmax=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config["LEARNING_RATE"])
        self.dataset = SegmentationDataset(
            self.flip,
            self.project_id,
            self.query,
            transform=get_transforms(),
            part="train",
            val_split=self.config["VAL_SPLIT"],
        )
        self.global_weights = None
        self.num_steps = 0
        self.initialized = True

    def train(self, data, extra=None):
        extra = extra or {}
        fl_ctx = extra.get("fl_ctx")
        current_round = extra.get("current_round", 0)
        self.global_weights = data.weights
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in data.weights.items()})
        loader = DataLoader(self.dataset, batch_size=2, shuffle=True, num_workers=1)
        epochs = self.config["LOCAL_ROUNDS"]
        self.num_steps = 0
        self.model.train()
        for epoch in range(epochs):
            losses = []
            for batch in loader:
                self.optimizer.zero_grad()
                loss = self.loss_fn(self.model(batch["image"]), batch["label"])
                loss.backward()
                self.optimizer.step()
                losses.append(loss.item())
                self.num_steps += 1
            if fl_ctx is not None:
                send_metrics_value(
                    "train_loss",
                    np.float32(np.mean(losses)),
                    fl_ctx,
                    round=current_round * epochs + epoch + 1,
                    flip=self.flip,
                )

    def get_weights(self, extra=None):
        weight_type = (extra or {}).get("weight_type", WeightType.WEIGHTS)
        if weight_type == WeightType.WEIGHT_DIFF:
            diff = get_model_weights_diff(self.global_weights, self.model.state_dict(), self.num_steps)
            return ExchangeObject(
                weights=diff.data, weight_type=WeightType.WEIGHT_DIFF, statistics={"num_steps": self.num_steps}
            )
        weights = {k: v.cpu().numpy() for k, v in self.model.state_dict().items()}
        return ExchangeObject(weights=weights, weight_type=WeightType.WEIGHTS)

    def evaluate(self, data, extra=None):
        raise NotImplementedError("the trainer does not evaluate: see validator.py")

    def finalize(self, extra=None):
        pass
