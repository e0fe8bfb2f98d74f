"""``flip models predict``: a registry model (and its preprocessing model) predicting on image files or a tensor, with
the uncertainty of the run's method (ensemble, MC dropout, SWAG) per input.

Inputs are read as their raw values: a PNG/JPEG/... image as its pixel values (a grey image ``H×W``, a colour one
``C×H×W``, as float32), a DICOM file as its ``pixel_array``, a ``.pt`` file as a tensor (``torch.load`` with
``weights_only=True``: a batch ``N×...`` or one input). The model's preprocessing model, if it has one, turns the
batch of raw inputs into the model's input; then the model (or every ensemble member, MC dropout pass or SWAG
sample) gives class probabilities (softmax of its outputs). Per input: the predicted class, its probability, the
predictive entropy of the mean probabilities and, with an uncertainty method, the spread (std) of the predicted
class's probability over members or samples.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from flip.constants import RunFile, Uncertainty
from flip.errors import RegistryError
from flip.storage.model_files import (
    MODEL_FUNCTION,
    PREPROCESSING_FUNCTION,
    load_models_module,
    module_of,
    shape_text,
    state_of,
)
from flip.storage.registry import ModelRegistry, RunRecord
from flip.uncertainty import ensemble_predict, mc_dropout_predict, predictive_entropy, swag_predict

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
#: the most inputs one call predicts on
MAX_INPUTS = 10_000


def read_input(path: str | Path) -> tuple[list[str], torch.Tensor]:
    """One input file as (names, batch): an image or DICOM file is one input, a ``.pt`` tensor one or a batch.

    Raises:
        RegistryError: the file is missing, of another kind, or cannot be read (named).
    """
    path = Path(path)
    if not path.is_file():
        raise RegistryError(f"input {str(path)!r} not found")
    suffix = path.suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image, dtype=np.float32)
            array = array if array.ndim == 2 else np.moveaxis(array, -1, 0)  # H×W×C -> C×H×W
            return [path.name], torch.from_numpy(np.ascontiguousarray(array))[None]
        if suffix in DICOM_SUFFIXES:
            import pydicom

            return [path.name], torch.from_numpy(pydicom.dcmread(path).pixel_array.astype(np.float32))[None]
        if suffix == ".pt":
            tensor = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(tensor, torch.Tensor) or tensor.is_complex():
                raise RegistryError(f"input {path.name} must hold one real tensor, got {type(tensor).__name__}")
            return [path.name], tensor.float()
    except RegistryError:
        raise
    except Exception as exc:  # noqa: BLE001 - image, DICOM and torch readers raise many types on a bad file
        raise RegistryError(f"input {path.name} cannot be read as {suffix[1:]}: {type(exc).__name__}") from exc
    raise RegistryError(
        f"input {path.name}: expected an image ({', '.join(IMAGE_SUFFIXES)}), a DICOM file "
        f"({', '.join(DICOM_SUFFIXES)}) or a .pt tensor"
    )


def read_inputs(paths: list[str | Path], input_shape: list[int] | None) -> tuple[list[str], torch.Tensor]:
    """All inputs as one batch; a ``.pt`` tensor whose shape is the model's input shape is one input, else its first
    dimension is the batch.

    Raises:
        RegistryError: no inputs, too many, or of different shapes (named).
    """
    if not paths:
        raise RegistryError("give at least one input file")
    names: list[str] = []
    parts: list[torch.Tensor] = []
    for path in paths:
        batch_names, batch = read_input(path)
        if Path(path).suffix.lower() == ".pt":
            if input_shape is not None and list(batch.shape) == list(input_shape) or batch.dim() <= 1:
                batch = batch[None]
            batch_names = [f"{Path(path).name}[{i}]" for i in range(len(batch))]
        names += batch_names
        parts.append(batch)
    shapes = {tuple(p.shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise RegistryError(
            f"the inputs have different shapes ({', '.join(shape_text(s) for s in sorted(shapes))}): "
            "predict on inputs of one shape at a time"
        )
    if len(names) > MAX_INPUTS:
        raise RegistryError(f"{len(names)} inputs: at most {MAX_INPUTS} per call")
    return names, torch.cat(parts)


@dataclass
class Prediction:
    """What predict returns: the run it used, the method, and one row per input."""

    model_id: str
    run_id: str
    method: str
    preprocessing: bool
    rows: list[dict[str, Any]]

    def document(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "run_id": self.run_id,
            "uncertainty": self.method,
            "preprocessing": self.preprocessing,
            "predictions": self.rows,
        }


def _method(registry: ModelRegistry, record: RunRecord) -> str:
    if RunFile.UNCERTAINTY in record.keys:
        try:
            method = json.loads(registry.read_artifact(record, RunFile.UNCERTAINTY)).get("method", "NONE")
        except (ValueError, AttributeError):
            method = "NONE"
        method = str(method).lower()
        if method in (Uncertainty.ENSEMBLE, Uncertainty.MC_DROPOUT, Uncertainty.SWAG):
            return method
    return Uncertainty.NONE


def predict(
    model_id: str,
    inputs: list[str | Path],
    *,
    run_id: str | None = None,
    models_file: str | Path | None = None,
    samples: int = 20,
    seed: int = 0,
    registry: ModelRegistry | None = None,
) -> Prediction:
    """Predict with a verified run of a registry model (default: its latest) on ``inputs``.

    Args:
        model_id, run_id: the model and run (default: the latest verified run with a global model).
        inputs: image, DICOM or ``.pt`` files.
        models_file: the app's ``models.py`` (``get_model()``, and ``get_preprocessing()`` for a state-dict
            preprocessing model); not needed for TorchScript files.
        samples: MC dropout passes or SWAG samples (>= 2). Default 20.
        seed: the seed of MC dropout and SWAG sampling.

    Raises:
        RegistryError: an unknown model or run, an input that cannot be read, a model that does not fit or run.
        ValueError: a bad argument (named).
    """
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples!r}")
    registry = registry or ModelRegistry()
    record = registry.run(model_id, run_id, RunFile.GLOBAL_MODEL)
    models: ModuleType | None = load_models_module(models_file) if models_file is not None else None
    method = _method(registry, record)
    loaded = registry.load_artifact(record, RunFile.GLOBAL_MODEL)
    model = module_of(loaded, models, MODEL_FUNCTION, f"{RunFile.GLOBAL_MODEL} of run {record.run_id}")
    preprocess = None
    if RunFile.PREPROCESSING in record.keys:
        pre = registry.load_artifact(record, RunFile.PREPROCESSING)
        preprocess = module_of(pre, models, PREPROCESSING_FUNCTION, f"{RunFile.PREPROCESSING} of run {record.run_id}")
    members = None
    if method in (Uncertainty.ENSEMBLE, Uncertainty.SWAG):
        artifact = RunFile.ENSEMBLE if method == Uncertainty.ENSEMBLE else RunFile.SWAG
        if artifact not in record.keys:
            raise RegistryError(f"run {record.run_id} is a {method} run without {artifact}")
        members = registry.load_artifact(record, artifact)
    raw_shape = record.manifest.get("input_shape")
    names, batch = read_inputs(list(inputs), raw_shape if isinstance(raw_shape, list) else None)
    with torch.no_grad():
        x = preprocess(batch) if preprocess is not None else batch
        std = None
        if method == Uncertainty.ENSEMBLE:
            mean, std = ensemble_predict(lambda: _rebuilt(model), {s: state_of(m, s) for s, m in members.items()}, x)
        elif method == Uncertainty.SWAG:
            mean, std = swag_predict(lambda: _rebuilt(model), members, x, samples=samples, seed=seed)
        elif method == Uncertainty.MC_DROPOUT:
            mean, std = mc_dropout_predict(model, x, samples=samples, seed=seed)
        else:
            model.eval()
            mean = torch.softmax(model(x), dim=-1)
    entropy = predictive_entropy(mean)
    rows = []
    for i, name in enumerate(names):
        label = int(mean[i].argmax())
        row = {
            "input": name,
            "prediction": label,
            "probability": float(mean[i, label]),
            "entropy": float(entropy[i]),
            "probabilities": [float(p) for p in mean[i]],
        }
        if std is not None:
            row["std"] = float(std[i, label])
        rows.append(row)
    return Prediction(record.model_id, record.run_id, method, preprocess is not None, rows)


def _rebuilt(model: torch.nn.Module) -> torch.nn.Module:
    """A fresh copy of ``model`` to load a member's weights into (TorchScript modules copy too)."""
    return copy.deepcopy(model)


def format_prediction(result: Prediction) -> str:
    """The table ``flip models predict`` prints."""
    lines = [
        f"model {result.model_id} run {result.run_id}: uncertainty {result.method.upper()}"
        + (", preprocessing applied" if result.preprocessing else "")
    ]
    spread = any("std" in r for r in result.rows)
    width = max(5, *(len(r["input"]) for r in result.rows))
    lines.append(f"{'input':{width}}  class  probability  entropy" + ("      std" if spread else ""))
    for r in result.rows:
        line = f"{r['input']:{width}}  {r['prediction']:>5}  {r['probability']:>11.3f}  {r['entropy']:>7.3f}"
        lines.append(line + (f"  {r['std']:>7.3f}" if spread else ""))
    return "\n".join(lines)
