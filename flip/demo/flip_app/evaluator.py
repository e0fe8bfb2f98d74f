"""FLIP_EVALUATOR, FLIP's Executor contract (evaluation jobs): each model of config.json "models" on all of this
site's images."""

import json
from pathlib import Path

import torch
from digits_dicom import load_cohort
from models import model_paths
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.apis.signal import Signal

from flip import FLIP
from flip.constants import PTConstants


class FLIP_EVALUATOR(Executor):
    def __init__(self, evaluate_task_name=PTConstants.EvalTaskName, project_id="", query=""):
        super().__init__()
        self._evaluate_task_name = evaluate_task_name
        self.config = json.loads((Path(__file__).parent.resolve() / "config.json").read_text())
        self.project_id = project_id
        self.query = query
        self.flip = FLIP()
        self.dataframe = self.flip.get_dataframe(self.project_id, self.query)

    def execute(self, task_name: str, shareable: Shareable, fl_ctx: FLContext, abort_signal: Signal) -> Shareable:
        if task_name != self._evaluate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        models = from_shareable(shareable).data
        images, labels = load_cohort(self.flip, self.project_id, self.dataframe)
        results = {}
        for name, entry in self.config["models"].items():
            weights = models[name]
            if weights.data_kind != DataKind.WEIGHTS:
                return make_reply(ReturnCode.BAD_TASK_DATA)
            model = model_paths[entry["path"]]
            model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.data.items()})
            model.eval()
            with torch.no_grad():
                logits = model(images)
            results[name] = {
                "accuracy": (logits.argmax(1) == labels).float().mean().item(),
                "loss": torch.nn.functional.cross_entropy(logits, labels).item(),
                "num_samples": len(labels),
            }
        return DXO(data_kind=DataKind.METRICS, data=results).to_shareable()
