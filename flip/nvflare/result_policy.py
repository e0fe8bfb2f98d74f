"""What may leave a site as a task's result: the rule every privacy filter of ours applies first. Fails closed.

NVFlare applies a site's privacy scope filters (``local/privacy.json``) to the result of *every* task, so the
filter, not the job, decides. Per result:

- an error reply (return code not OK) leaves as it is if it carries no data (headers only, no arrays);
- for a **training** task (every task that is not a known non-training task: ``train``, ``swag``, and any task
  name we do not know, or none) only a model *difference* may leave, and only through the filter: a WEIGHT_DIFF
  DXO, or a COLLECTION whose leaves are all WEIGHT_DIFF DXOs (SWAG's moments, per-stage updates), each holding
  a dict of arrays. Anything else (METRICS, WEIGHTS, custom kinds, a Shareable that is not a DXO, a DXO with
  extra entries beside it) is refused;
- for a known **non-training** task (``validate``, ``evaluate``, ``init_training``, FLIP's ``evaluation``,
  ``validate_<stage>`` and cleanup tasks: :func:`is_training_task`) only scores leave: a METRICS DXO of numbers,
  possibly nested in dicts and lists (FLIP's validators: ``{"f1-score": {"Effusion": [0.8, nan]}}``; the rule of
  :func:`flip.metrics.clean_nested_metrics`), or an empty reply. A number that is not finite is dropped from the
  result (with a logged note); anything else that is not a number refuses the result. A model (WEIGHTS,
  WEIGHT_DIFF, arrays) never leaves for them; ``submit_model`` is not among them, so a local model sent for it is
  refused too.

Nowhere may headers or DXO meta carry arrays, tensors or bytes. A refusal raises :class:`PrivacyError` naming
the task, the kind and the reason; NVFlare then sends an error instead of the result.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from flip.constants import FlipTask, FlipTasks, PTConstants
from flip.errors import PrivacyError
from flip.metrics import NestedMetrics, clean_nested_metrics

#: tasks whose results are scores of a model the server sent (or nothing): flip's, NVFlare's cross-site one, and
#: FLIP's (its evaluation task and its cleanup tasks, which CleanupImages answers with an empty reply)
NON_TRAINING_TASKS = frozenset(
    {
        FlipTask.VALIDATE,
        FlipTask.EVALUATE,
        FlipTask.INIT_TRAINING,
        AppConstants.TASK_VALIDATION,
        PTConstants.EvalTaskName,
        *(str(t) for t in FlipTasks),
    }
)
#: a stage's validation task in FLIP's multi-stage jobs (``validate_ae``, ``validate_dm``): scores only
_STAGE_VALIDATION = re.compile(r"validate_[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: the key a DXO is stored under in its Shareable (nvflare.apis.dxo writes it; not exported there)
_DXO_KEY = "DXO"
_MAX_DEPTH = 16


def is_training_task(task: Any) -> bool:
    """True unless ``task`` is a known non-training task (an unknown or missing task name counts as training).

    Non-training: :data:`NON_TRAINING_TASKS` and ``validate_<stage>``. Either answer lets only a closed set of
    results leave (a filtered update, or scores), so a name taken for the other kind makes the result refused,
    never sent unfiltered.
    """
    return not (isinstance(task, str) and (task in NON_TRAINING_TASKS or _STAGE_VALIDATION.fullmatch(task)))


def holds_arrays(value: Any, depth: int = 0) -> bool:
    """True if ``value`` is or contains (in dicts, lists, tuples, sets, DXOs) an array, a tensor or bytes.

    Nesting deeper than 16 levels counts as holding arrays (fails closed).
    """
    if isinstance(value, (np.ndarray, bytes, bytearray, memoryview, DXO)) or _is_tensor(value):
        return True
    if isinstance(value, (Mapping, list, tuple, set, frozenset)):
        if depth >= _MAX_DEPTH:
            return True
        items = [*value.keys(), *value.values()] if isinstance(value, Mapping) else list(value)
        return any(holds_arrays(v, depth + 1) for v in items)
    return False


def _is_tensor(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("torch") and hasattr(value, "numel")


def check_result(shareable: Shareable, fl_ctx: FLContext, who: str, note: Callable[[str], None] | None = None) -> bool:
    """Decide what happens to a result leaving this site (the rule in the module docstring).

    A non-training task's METRICS are rewritten in place as they may leave: plain numbers, non-finite ones dropped
    (each drop is passed to ``note``).

    Args:
        shareable: the task's result.
        fl_ctx: its context; the task name is ``FLContextKey.TASK_NAME``.
        who: the filter deciding (named in a refusal).
        note: called with one line per value dropped (e.g. the filter's log_warning); None: not told.

    Returns:
        True: the result is a training update and must go through the filter; False: it may leave as it is.

    Raises:
        PrivacyError: the result is refused (the message names the task, the kind and the reason).
    """
    task = fl_ctx.get_prop(FLContextKey.TASK_NAME) if fl_ctx is not None else None
    training = is_training_task(task)

    def refuse(kind: str | None, reason: str) -> PrivacyError:
        name = task if isinstance(task, str) else None
        what = "the result" if kind is None else f"{'an' if kind[0] in 'AEIOUaeiou' else 'a'} {kind} result"
        return PrivacyError(f"{who} refuses {what} for task {name!r}: {reason}")

    if not isinstance(shareable, Shareable):
        raise refuse(type(shareable).__name__, "a result must be a Shareable")
    headers = shareable.get(ReservedHeaderKey.HEADERS) or {}
    if holds_arrays(headers):
        raise refuse(None, "headers must not carry arrays, tensors or bytes")
    payload = sorted(str(k) for k in shareable if k != ReservedHeaderKey.HEADERS)
    rc = shareable.get_return_code(ReturnCode.OK)
    if rc != ReturnCode.OK:
        if payload:
            raise refuse(f"{rc} error", f"an error reply must carry no data, it holds {payload}")
        return False
    if not payload:
        if training:
            raise refuse("empty", "a training task's result must be a WEIGHT_DIFF update")
        return False
    if payload != [_DXO_KEY] or shareable.get_header(ReservedHeaderKey.CONTENT_TYPE) != _DXO_KEY:
        extra = [k for k in payload if k != _DXO_KEY]
        kind = f"DXO with extra entries {extra}" if _DXO_KEY in payload else "non-DXO"
        raise refuse(kind, "only a DXO may leave, nothing beside it")
    try:
        dxo = from_shareable(shareable)
    except (ValueError, TypeError, KeyError) as exc:
        raise refuse("non-DXO", f"the DXO cannot be read ({type(exc).__name__})") from exc
    if training:
        _check_update(dxo, refuse)
        return True
    scores = _check_scores(dxo, refuse)
    if note is not None:
        for line in scores.notes(f"{who}: task {task!r}"):
            note(line)
    dxo.data = scores.data  # plain numbers, the non-finite ones dropped
    dxo.update_shareable(shareable)
    return False


def _kind(dxo: DXO) -> str:
    return str(getattr(dxo.data_kind, "value", dxo.data_kind))


def _check_update(dxo: DXO, refuse, depth: int = 0) -> None:
    """A training task's DXO: WEIGHT_DIFF (a dict of arrays) or a COLLECTION of them, meta without arrays."""
    kind = _kind(dxo)
    if holds_arrays(dxo.meta):
        raise refuse(kind, "DXO meta must not carry arrays, tensors or bytes")
    if dxo.data_kind == DataKind.WEIGHT_DIFF:
        if not isinstance(dxo.data, Mapping):
            raise refuse(kind, f"a WEIGHT_DIFF must hold a dict of arrays, got {type(dxo.data).__name__}")
        bad = [str(k) for k, v in dxo.data.items() if not (isinstance(v, np.ndarray) or _is_tensor(v))]
        if bad:
            raise refuse(kind, f"entry {bad[0]!r} is not an array: a WEIGHT_DIFF holds arrays only")
        return
    if dxo.data_kind == DataKind.COLLECTION and depth < _MAX_DEPTH:
        parts = dxo.data.values() if isinstance(dxo.data, Mapping) else dxo.data if isinstance(dxo.data, list) else None
        if not parts:
            raise refuse(kind, "a COLLECTION must hold WEIGHT_DIFF DXOs")
        for part in parts:
            if not isinstance(part, DXO):
                raise refuse(kind, f"a COLLECTION holds a {type(part).__name__}: only WEIGHT_DIFF DXOs may leave")
            _check_update(part, refuse, depth + 1)
        return
    if dxo.data_kind == DataKind.WEIGHTS:
        raise refuse(kind, "only WEIGHT_DIFF can be filtered (send weight differences, never full weights)")
    raise refuse(
        kind,
        "only a WEIGHT_DIFF update (or a COLLECTION of them) may leave for a training task, through the privacy filter",
    )


def _check_scores(dxo: DXO, refuse) -> NestedMetrics:
    """A non-training task's DXO: METRICS of numbers (nested at most), meta without arrays; the metrics as they
    may leave (plain numbers, non-finite ones dropped)."""
    kind = _kind(dxo)
    if dxo.data_kind != DataKind.METRICS:
        raise refuse(kind, "only METRICS (numbers) may leave for a non-training task: a model or data never does")
    if holds_arrays(dxo.meta):
        raise refuse(kind, "DXO meta must not carry arrays, tensors or bytes")
    why = "metrics must be named finite numbers (at most nested in dicts and lists)"
    try:
        scores = clean_nested_metrics(dxo.data)
    except ValueError as exc:
        raise refuse(kind, f"{why}: {exc}") from exc
    if scores.problems:
        raise refuse(kind, f"{why}: {scores.problems[0]}")
    return scores
