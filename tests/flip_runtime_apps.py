"""Small FLIP apps written as researchers write them (FLIP's ``flip`` API, no flip internals), and their site data.

Used by the runtime's tests at FakeEngine level and in the simulator: an Executor-style trainer, validator and
evaluator (flip-fl-base's contract), MONAI FL ClientAlgo ones, and broken apps. The model has a BatchNorm layer,
so every update carries the integer buffer ``num_batches_tracked``; the images are real DICOM files (pydicom).
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np

#: the modules an app's custom/ folder holds (imported by bare name, as NVFlare and FLIP do)
APP_MODULES = ("trainer", "validator", "evaluator", "models", "app_data")

MODELS = """
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(2)
        self.fc = torch.nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def get_model():
    torch.manual_seed(0)
    return Net()


model_paths = {"net": get_model()}
"""

APP_DATA = '''
"""The app's own data code: the cohort from FLIP, DICOM files read with pydicom."""
import numpy as np
import pydicom
import torch
from torch.utils.data import DataLoader, Dataset

from flip.constants import ResourceType


class Images(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        pixels = pydicom.dcmread(path).pixel_array.astype(np.float32) / 16.0
        return torch.from_numpy(pixels)[None], label


def items(flip, project_id, query):
    frame = flip.get_dataframe(project_id, query)
    found = []
    for accession, label in zip(frame["accession_id"], frame["label"]):
        try:
            folder = flip.get_by_accession_number(project_id, accession, resource_type=[ResourceType.DICOM])
        except Exception:
            continue
        found += [(str(f), int(label)) for f in sorted(folder.rglob("*.dcm"))]
    return found


def loader(found, workers=1):
    return DataLoader(Images(found), batch_size=2, shuffle=False, num_workers=workers)
'''

EXECUTOR_TRAINER = """
import json
from pathlib import Path

import torch
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply
from nvflare.app_common.app_constant import AppConstants

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value
from flip.utils import get_model_weights_diff

from app_data import items, loader
from models import get_model

CONFIG = json.loads((Path(__file__).parent / "config.json").read_text())


class FLIP_TRAINER(Executor):
    def __init__(self, train_task_name="train", submit_model_task_name="submit_model", exclude_vars=None,
                 project_id="", query=""):
        super().__init__()
        self._train_task_name = train_task_name
        self.project_id, self.query = project_id, query
        self.flip = FLIP()
        self.found = items(self.flip, project_id, query)
        self.model = get_model()

    def get_num_epochs(self):
        return CONFIG["LOCAL_ROUNDS"]

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name != self._train_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        dxo = from_shareable(shareable)
        if dxo.data_kind != DataKind.WEIGHTS:
            return make_reply(ReturnCode.BAD_TASK_DATA)
        global_weights = dxo.data
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in global_weights.items()})  # strict
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        current_round = shareable.get_header(AppConstants.CURRENT_ROUND)
        steps = 0
        self.model.train()
        for epoch in range(CONFIG["LOCAL_ROUNDS"]):
            for x, y in loader(self.found, CONFIG.get("WORKERS", 1)):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(self.model(x), y)
                loss.backward()
                optimizer.step()
                steps += 1
                if abort_signal.triggered:
                    return make_reply(ReturnCode.TASK_ABORTED)
            send_metrics_value("TRAIN_LOSS", loss.item(), fl_ctx,
                               round=current_round * CONFIG["LOCAL_ROUNDS"] + epoch + 1, flip=self.flip)
        for value in (0.5, float("nan"), 0.75):  # one label per class, NaN included, without a round
            send_metrics_value("TRAIN-F1-SCORE", value, fl_ctx)
        return get_model_weights_diff(global_weights, self.model.state_dict(), steps).to_shareable()
"""

EXECUTOR_VALIDATOR = """
import numpy as np
import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value

from app_data import items, loader
from models import get_model


class FLIP_VALIDATOR(Executor):
    def __init__(self, validate_task_name="validate", project_id="", query=""):
        super().__init__()
        self._validate_task_name = validate_task_name
        self.flip = FLIP()
        self.found = items(self.flip, project_id, query)

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name != self._validate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        model = get_model()
        model.load_state_dict({k: torch.as_tensor(v) for k, v in from_shareable(shareable).data.items()})
        model.eval()
        losses, correct, total = [], 0, 0
        with torch.no_grad():
            for x, y in loader(self.found):
                out = model(x)
                losses.append(np.float64(torch.nn.functional.cross_entropy(out, y).item()))
                correct += int((out.argmax(1) == y).sum())
                total += len(y)
        send_metrics_value("TEST_LOSS", losses[-1], fl_ctx)
        metrics = {"loss": losses, "accuracy": np.float64(correct / total),
                   "f1-score": {"Effusion": [0.5, float("nan")], "Lungs in normal arrangement": [np.float32(0.25)]}}
        return DXO(data_kind=DataKind.METRICS, data=metrics).to_shareable()
"""

EXECUTOR_EVALUATOR = """
import json
from pathlib import Path

import torch
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.executor import Executor
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import make_reply

from flip import FLIP
from flip.constants import PTConstants

from app_data import items, loader
from models import model_paths

CONFIG = json.loads((Path(__file__).parent / "config.json").read_text())


class FLIP_EVALUATOR(Executor):
    def __init__(self, evaluate_task_name=PTConstants.EvalTaskName, project_id="", query=""):
        super().__init__()
        self._evaluate_task_name = evaluate_task_name
        self.found = items(FLIP(), project_id, query)

    def execute(self, task_name, shareable, fl_ctx, abort_signal):
        if task_name != self._evaluate_task_name:
            return make_reply(ReturnCode.TASK_UNKNOWN)
        collection = from_shareable(shareable).data
        results = {}
        for name, entry in CONFIG["models"].items():
            sub = collection[name]
            if sub.data_kind != DataKind.WEIGHTS:
                return make_reply(ReturnCode.BAD_TASK_DATA)
            model = model_paths[entry["path"]]
            model.load_state_dict({k: torch.as_tensor(v) for k, v in sub.data.items()})
            model.eval()
            with torch.no_grad():
                raw = [float((model(x).argmax(1) == y).float().mean()) for x, y in loader(self.found, 0)]
            results[name] = {"lesion": {"mean_accuracy": sum(raw) / len(raw), "raw_accuracy": raw + [float("nan")]}}
        return DXO(data_kind=DataKind.METRICS, data=results).to_shareable()
"""

CLIENT_ALGO_TRAINER = """
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.constants import WeightType
from monai.fl.utils.exchange_object import ExchangeObject

from flip import FLIP
from flip.nvflare.metrics import send_metrics_value
from flip.utils import get_model_weights_diff

from app_data import items, loader
from models import get_model


class FLIP_TRAINER(ClientAlgo):
    def __init__(self, project_id="", query="", train_task_name="train"):
        self.project_id, self.query, self.train_task_name = project_id, query, train_task_name
        self.calls = []

    def initialize(self, extra=None):
        self.calls.append(("initialize", sorted(extra)))
        self.flip = FLIP()
        self.found = items(self.flip, self.project_id, self.query)
        self.model = get_model()
        self.steps = 0

    def train(self, data, extra=None):
        self.calls.append(("train", sorted(extra)))
        self.global_weights = data.weights
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in data.weights.items()})
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05)
        self.steps = 0
        for x, y in loader(self.found):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            loss.backward()
            optimizer.step()
            self.steps += 1
        if extra.get("fl_ctx") is not None:
            send_metrics_value("train_loss", loss.item(), fl_ctx=extra["fl_ctx"])

    def get_weights(self, extra=None):
        self.calls.append(("get_weights", extra["weight_type"]))
        if extra["weight_type"] == WeightType.WEIGHT_DIFF:
            diff = get_model_weights_diff(self.global_weights, self.model.state_dict(), self.steps)
            return ExchangeObject(weights=diff.data, weight_type=WeightType.WEIGHT_DIFF,
                                  statistics={"num_steps": self.steps})
        return ExchangeObject(weights=self.model.state_dict(), weight_type=WeightType.WEIGHTS)

    def evaluate(self, data, extra=None):
        raise NotImplementedError

    def finalize(self, extra=None):
        pass
"""

CLIENT_ALGO_VALIDATOR = """
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.exchange_object import ExchangeObject

from models import get_model


class FLIP_VALIDATOR(ClientAlgo):
    def __init__(self, project_id="", query="", validate_task_name="validate"):
        self.validate_task_name = validate_task_name

    def initialize(self, extra=None):
        self.model = get_model()

    def evaluate(self, data, extra=None):
        self.model.load_state_dict({k: torch.as_tensor(v) for k, v in data.weights.items()})
        return ExchangeObject(metrics={"val_acc": torch.tensor(0.5).numpy(), "per_class": [0.25, float("nan")]})
"""

CLIENT_ALGO_EVALUATOR = """
import torch
from monai.fl.client import ClientAlgo
from monai.fl.utils.exchange_object import ExchangeObject

from models import model_paths


class FLIP_EVALUATOR(ClientAlgo):
    def __init__(self, project_id="", query="", evaluate_task_name="evaluation"):
        self.evaluate_task_name = evaluate_task_name

    def initialize(self, extra=None):
        pass

    def evaluate(self, data, extra=None):
        results = {}
        for name, sub in data.weights.items():
            model_paths["net"].load_state_dict({k: torch.as_tensor(v) for k, v in sub.data.items()})
            results[name] = {"mean_dice": 0.5, "raw_dice": [0.25, 0.75]}
        return ExchangeObject(metrics=results)
"""

CONFIG = '{"LOCAL_ROUNDS": 1, "WORKERS": 1}'


def write_app(custom: Path, **files: str) -> Path:
    """Write an app's custom/ folder: ``models.py``, ``app_data.py``, ``config.json`` and the given files
    (``trainer="..."`` -> ``trainer.py``; ``config`` -> ``config.json``)."""
    custom.mkdir(parents=True, exist_ok=True)
    contents = {"models": MODELS, "app_data": APP_DATA, "config": CONFIG, **files}
    for name, text in contents.items():
        target = custom / ("config.json" if name == "config" else f"{name}.py")
        target.write_text(textwrap.dedent(text).lstrip())
    return custom


def forget_app_modules() -> None:
    """Drop the app modules a test imported (each test's app is another folder with the same module names)."""
    for name in APP_MODULES:
        sys.modules.pop(name, None)
    sys.path[:] = [p for p in sys.path if not p.endswith("/custom")]


def write_dicom(path: Path, level: int) -> None:
    """A 4x4 DICOM image (pydicom), brighter for a higher ``level``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "CR", 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(16, dtype=np.uint16) % 4 + 4 * level).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)


def write_cohort(
    root: Path, accessions: int, offset: int = 0, accession_column: str = "accession_id"
) -> tuple[Path, Path]:
    """A site's cohort: ``root/cohort.csv`` (accession ids and a label) and ``root/images/<accession>/*.dcm``."""
    images = root / "images"
    rows = [f"{accession_column},label"]
    for i in range(accessions):
        accession = f"ACC{offset + i:04d}"
        label = (offset + i) % 2
        for j in range(2):
            write_dicom(images / accession / "study" / f"{j}.dcm", level=label * 2 + j)
        rows.append(f"{accession},{label}")
    images.mkdir(parents=True, exist_ok=True)
    csv = root / "cohort.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv, images
