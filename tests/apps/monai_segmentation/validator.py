"""FLIP_VALIDATOR (MONAI FL's ClientAlgo): mean Dice of a model on the validation volumes."""

import json
from pathlib import Path

import numpy as np
import torch
from flip_datasets import SegmentationDataset
from models import get_model
from monai.data import DataLoader
from monai.fl.client import ClientAlgo
from monai.fl.utils.exchange_object import ExchangeObject
from monai.metrics import DiceMetric
from monai.transforms import AsDiscrete
from transforms import get_transforms

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value


class FLIP_VALIDATOR(ClientAlgo):
    def __init__(self, project_id="", query="", validate_task_name="validate"):
        self.project_id = project_id
        self.query = query
        self.validate_task_name = validate_task_name

    def initialize(self, extra=None):
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self.flip = FLIP()
        self.dataset = SegmentationDataset(
            self.flip,
            self.project_id,
            self.query,
            transform=get_transforms(),
            part="val",
            val_split=self.config["VAL_SPLIT"],
        )

    def evaluate(self, data, extra=None):
        model = get_model()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in data.weights.items()})
        model.eval()
        dice = DiceMetric(include_background=False, reduction="mean")
        to_label, to_onehot = AsDiscrete(argmax=True, to_onehot=2), AsDiscrete(to_onehot=2)
        with torch.no_grad():
            for batch in DataLoader(self.dataset, batch_size=1, num_workers=1):
                prediction = to_label(model(batch["image"])[0])[None]
                dice(y_pred=prediction, y=to_onehot(batch["label"][0])[None])
        mean_dice = np.float64(dice.aggregate().item())
        fl_ctx = (extra or {}).get("fl_ctx")
        if fl_ctx is not None:
            send_metrics_value("test_dice", mean_dice, fl_ctx, flip=self.flip)
        return ExchangeObject(metrics={"val_acc": mean_dice})

    def train(self, data, extra=None):
        raise NotImplementedError("the validator does not train")

    def get_weights(self, extra=None):
        raise NotImplementedError("the validator has no weights")

    def finalize(self, extra=None):
        pass
