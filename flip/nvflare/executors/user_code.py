"""Load the user's code from a job's custom/ folder, with errors that name the file and what was expected.

The contract (plain PyTorch, no nvflare import):

- ``models.py`` defines ``get_model()`` returning a ``torch.nn.Module``;
- ``trainer.py`` defines class ``FLIP_TRAINER``: ``FLIP_TRAINER(config)`` and
  ``train(model, ctx) -> dict`` (trains ``model`` in place; returns ``num_samples`` (> 0), optionally
  ``num_steps`` (> 0, the optimizer steps of this round) and any metrics as numbers);
- ``validator.py`` defines class ``FLIP_VALIDATOR``: ``FLIP_VALIDATOR(config)`` and
  ``validate(model, ctx) -> dict`` of metrics (numbers);
- ``config.json`` is a JSON object (e.g. ``{"LOCAL_ROUNDS": 2, "LEARNING_RATE": 0.01}``), given to the
  classes as ``config``.

``ctx`` is a :class:`TaskContext`. Under a site's record-level DP policy the runner trains ``train`` as it is with
DP-SGD (flip.privacy.automatic: the DataLoader it iterates in training mode, its optimizer's steps); a trainer may
instead pass its model, optimizer and ``torch.utils.data.DataLoader`` through ``ctx.make_private`` itself.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from flip.constants import UserFile
from flip.errors import CohortValueError, UserCodeError

#: the folders :func:`load_module` put on ``sys.path`` in this process (a simulator started later from it must
#: not hand them to its sites: see flip.simulate.isolated_path)
USER_DIRS: list[str] = []


def _unchanged(model, optimizer, data_loader, epochs: int = 1):
    """``ctx.make_private`` where no site policy asks for DP-SGD: everything as it was given."""
    return model, optimizer, data_loader


@dataclass
class TaskContext:
    """What the user's trainer/validator gets besides the model.

    Attributes:
        site_name: this site's name.
        job_id: the NVFlare job id.
        round: the current round, 0-based (0 for validation of a final model).
        total_rounds: rounds planned in this stage.
        data_dir: this site's images for this run.
        config: the job's config.json.
        stage: the stage's name in a multi-stage job, else None.
        device: "cuda" if available, else "cpu".
        should_abort: call it in your loops; stop and return when it says True.
        log: write one line to the site's log.
        make_private: ``model, optimizer, data_loader = ctx.make_private(model, optimizer, data_loader,
            epochs=E)``: under the site's record-level DP policy, Opacus's DP-SGD (per-record clipping and noise,
            Poisson-sampled batches) for this round's ``E`` epochs over ``data_loader`` (a torch DataLoader);
            elsewhere the three come back unchanged. Optional: without the call the runner makes the same DP-SGD
            around ``train`` (flip.privacy.automatic).
    """

    site_name: str
    job_id: str
    round: int
    total_rounds: int
    data_dir: Path
    config: dict[str, Any]
    stage: str | None = None
    device: str = "cpu"
    should_abort: Callable[[], bool] = field(default=lambda: False)
    log: Callable[[str], None] = field(default=print)
    make_private: Callable[..., tuple] = field(default=_unchanged)


def display_path(file_name: str) -> str:
    """How messages name the user's ``file_name``: ``custom/<file_name>``."""
    return f"custom/{file_name}"


_FLIP_PACKAGE = Path(__file__).resolve().parents[2]


def describe_failure(exc: BaseException, custom_dir: Path | None = None) -> str:
    """What failed, safe to send off the site: the exception's type; its message's first line only when flip's own
    code raised it (flip's messages name values and rules, never data: e.g. a dev dataframe without an
    ``accession_id`` column); and the line of the user's code in ``custom_dir`` it came through
    (``custom/trainer.py line 12``). The user's own messages (they can hold data) stay in the site's debug log.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    text = type(exc).__name__
    innermost = Path(frames[-1].filename).resolve() if frames else None
    flips = isinstance(exc, UserCodeError) or (innermost is not None and _FLIP_PACKAGE in innermost.parents)
    if flips and not isinstance(exc, CohortValueError):  # a cohort value (an accession id) stays at the site
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text += f": {first}" if first else ""
    if custom_dir is not None:
        custom = Path(custom_dir).resolve()
        mine = [f for f in frames if Path(f.filename).resolve().parent == custom]
        if mine:
            text += f" ({display_path(Path(mine[-1].filename).name)} line {mine[-1].lineno})"
    return text


def load_module(custom_dir: Path, file_name: str, expected: str) -> ModuleType:
    """Import ``custom_dir/file_name`` as a top-level module (so it can ``import models`` beside it).

    Raises:
        UserCodeError: the file is missing or fails to import (naming the file and ``expected``).
    """
    path = Path(custom_dir) / file_name
    shown = display_path(file_name)
    if not path.is_file():
        raise UserCodeError(f"{shown} not found: the job's custom/ folder must contain {file_name} defining {expected}")
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path.resolve():
        return existing
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
        USER_DIRS.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise UserCodeError(f"{shown} could not be imported: SyntaxError at line {exc.lineno}") from exc
    except ImportError as exc:
        del sys.modules[name]
        raise UserCodeError(f"{shown} could not be imported: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure of user code at import time is reported the same way
        del sys.modules[name]
        raise UserCodeError(f"{shown} raised {type(exc).__name__} while being imported") from exc
    return module


def load_class(custom_dir: Path, file_name: str, class_name: str, methods: tuple[str, ...]) -> type:
    """Return class ``class_name`` from the user's ``file_name``, checking it has ``methods``."""
    expected = f"class {class_name} with method(s) {', '.join(methods)}"
    module = load_module(custom_dir, file_name, expected)
    cls = getattr(module, class_name, None)
    shown = display_path(file_name)
    if cls is None:
        raise UserCodeError(f"{shown} does not define {class_name}: expected {expected}")
    if not isinstance(cls, type):
        raise UserCodeError(f"{shown}: {class_name} is a {type(cls).__name__}, expected {expected}")
    missing = [m for m in methods if not callable(getattr(cls, m, None))]
    if missing:
        raise UserCodeError(f"{shown}: class {class_name} has no method {missing[0]}(): expected {expected}")
    return cls


def load_function(custom_dir: Path, file_name: str, function_name: str) -> Callable:
    """Return function ``function_name`` from the user's ``file_name``."""
    expected = f"function {function_name}()"
    module = load_module(custom_dir, file_name, expected)
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserCodeError(f"{display_path(file_name)} does not define {function_name}(): expected {expected}")
    return function


def load_config(custom_dir: Path) -> dict[str, Any]:
    """Read ``config.json`` (a JSON object).

    Raises:
        UserCodeError: missing, not JSON (with the line), or not an object.
    """
    path = Path(custom_dir) / UserFile.CONFIG
    shown = display_path(UserFile.CONFIG)
    if not path.is_file():
        raise UserCodeError(
            f"{shown} not found: the job's custom/ folder must contain {UserFile.CONFIG} (a JSON object)"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        line = getattr(exc, "lineno", "?")
        raise UserCodeError(f"{shown} is not valid JSON (line {line}): expected a JSON object") from exc
    if not isinstance(config, dict):
        raise UserCodeError(f"{shown} holds a JSON {type(config).__name__}: expected a JSON object")
    return config


def build_model(custom_dir: Path) -> torch.nn.Module:
    """Call the user's ``models.get_model()`` and check it returns a torch module."""
    get_model = load_function(custom_dir, UserFile.MODELS, UserFile.MODEL_FUNCTION)
    try:
        model = get_model()
    except Exception as exc:  # noqa: BLE001 - user code boundary
        raise UserCodeError(f"{display_path(UserFile.MODELS)}: get_model() raised {type(exc).__name__}") from exc
    if not isinstance(model, torch.nn.Module):
        raise UserCodeError(
            f"{display_path(UserFile.MODELS)}: get_model() returned a {type(model).__name__}, "
            "expected a torch.nn.Module"
        )
    return model


def instantiate(cls: type, config: dict[str, Any], file_name: str) -> Any:
    """Create the user's class with ``cls(config)``."""
    try:
        return cls(config)
    except Exception as exc:  # noqa: BLE001 - user code boundary
        raise UserCodeError(
            f"{display_path(file_name)}: {cls.__name__}(config) raised {type(exc).__name__} "
            "(the constructor must accept the config dict)"
        ) from exc
