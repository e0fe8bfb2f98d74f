"""FLIP_EVALUATOR (FLIP's Executor contract): Dice of each model of config.json "models" on every scan here."""

import json
from pathlib import Path

import numpy as np
import torch
from models import model_paths
from monai.data import DataLoader, Dataset
from monai.metrics import DiceMetric
from monai.transforms import AsDiscrete, Compose, EnsureChannelFirstd, LoadImaged, ScaleIntensityd
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip import FLIP
from flip.constants import PTConstants, ResourceType


class FLIP_EVALUATOR(Executor):
    def __init__(self, evaluate_task_name=PTConstants.EvalTaskName, project_id="", query=""):
        super().__init__()
        self._evaluate_task_name = evaluate_task_name
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.dataframe = self.flip.get_dataframe(self.project_id, self.query)
        self.transforms = Compose(
            [
                LoadImaged(keys=["image", "label"], image_only=True),
                EnsureChannelFirstd(keys=["image", "label"]),
                ScaleIntensityd(keys="image"),
            ]
        )

    def datalist(self):
        items = []
        for accession_id in self.dataframe["accession_id"]:
            folder = self.flip.get_by_accession_number(
                self.project_id, accession_id, resource_type=[ResourceType.NIFTI]
            )
            for image in sorted(folder.rglob("input_*.nii.gz")):
                items.append({"image": str(image), "label": str(image).replace("/input_", "/label_")})
        return items

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self._evaluate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        received = from_shareable(shareable).data
        loader = DataLoader(Dataset(self.datalist(), transform=self.transforms), batch_size=1)
        to_label, to_onehot = AsDiscrete(argmax=True, to_onehot=2), AsDiscrete(to_onehot=2)
        results = {}
        for name, entry in self.config["models"].items():
            weights = received[name]
            if weights.data_kind != DataKind.WEIGHTS:
                return make_reply(ReturnCode.BAD_TASK_DATA)
            model = model_paths[entry["path"]]
            model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.data.items()})
            model.eval()
            dice = DiceMetric(include_background=False, reduction="none")
            with torch.no_grad():
                for batch in loader:
                    if abort_signal.triggered:
                        return make_reply(ReturnCode.TASK_ABORTED)
                    dice(y_pred=to_label(model(batch["image"])[0])[None], y=to_onehot(batch["label"][0])[None])
            raw = [float(v) for v in dice.aggregate().flatten()]
            results[name] = {"organ": {"mean_dice": float(np.mean(raw)), "raw_dice": raw}}
        return DXO(data_kind=DataKind.METRICS, data=results).to_shareable()
