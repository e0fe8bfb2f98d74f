"""Metrics as they travel from a site's trainer to metrics.json: named finite numbers only."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flip.errors import UserCodeError

MAX_METRICS = 64
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,63}")
NAME_RULE = "names are 1-64 letters, digits, '_', '.', '-', '/' starting with a letter"
NUM_SAMPLES = "num_samples"
NUM_STEPS = "num_steps"
#: nested metrics (FLIP apps' validators and evaluators): the deepest nesting and the most numbers one result holds
MAX_NESTED_DEPTH = 8
MAX_NESTED_NUMBERS = 10_000
#: a key of nested metrics: 1-128 printable characters (FLIP's names have spaces: "Lungs in normal arrangement")
MAX_KEY_LENGTH = 128


def to_number(value: Any) -> float | int | None:
    """A plain int/float for a python/numpy number, a 0-d numpy array or a one-element tensor; None for anything
    else."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf":
        return to_number(value[()])
    if hasattr(value, "numel") and hasattr(value, "item") and value.numel() == 1:
        return to_number(value.item())
    return None


def is_metric_name(key: Any) -> bool:
    """Whether ``key`` may name a metric (see NAME_RULE)."""
    return isinstance(key, str) and _NAME_RE.fullmatch(key) is not None


def finite_number(value: Any) -> float | int | None:
    """``value`` as a plain int/float if it is a number a float can hold finitely (no NaN, no Inf, no int beyond
    the float range: JSON readers would make it Infinity), else None."""
    number = to_number(value)
    if number is None:
        return None
    try:
        return number if math.isfinite(number) else None
    except OverflowError:  # an int too large for a float
        return None


def metric_problem(key: Any, value: Any) -> str | None:
    """Why ``key: value`` is not a metric (None if it is). Names the key, never the value (it could be data)."""
    if not is_metric_name(key):
        shown = repr(key) if isinstance(key, str) and len(key) <= 80 else f"of type {type(key).__name__}"
        return f"a metric named {shown}: {NAME_RULE}"
    if to_number(value) is None:
        return f"metric {key!r} of type {type(value).__name__}: expected a number"
    if finite_number(value) is None:
        return f"metric {key!r} that is not finite (NaN, Inf or beyond the float range)"
    return None


def clean_metrics(raw: Any, where: str) -> dict[str, float | int]:
    """Check a metrics dict from user code: names are identifiers, values finite numbers.

    Raises:
        UserCodeError: naming ``where`` and the bad key (never the value of a non-number: it could be data).
    """
    if not isinstance(raw, Mapping):
        raise UserCodeError(f"{where} must return a dict of metrics, got {type(raw).__name__}")
    if len(raw) > MAX_METRICS:
        raise UserCodeError(f"{where} returned {len(raw)} metrics: at most {MAX_METRICS} are allowed")
    clean: dict[str, float | int] = {}
    for key, value in raw.items():
        problem = metric_problem(key, value)
        if problem:
            raise UserCodeError(f"{where} returned {problem}")
        clean[key] = finite_number(value)
    return clean


@dataclass
class NestedMetrics:
    """What :func:`clean_nested_metrics` kept and dropped.

    Attributes:
        data: the metrics with plain python numbers, every non-finite number dropped (its key, or its list item).
        non_finite: how many non-finite numbers were dropped (NaN, Inf, an int beyond the float range).
        first_non_finite: where the first was (``f1-score.Effusion[3]``), or None.
        problems: what else was dropped, each naming its place (never its value).
    """

    data: dict[str, Any]
    non_finite: int = 0
    first_non_finite: str | None = None
    problems: list[str] = field(default_factory=list)

    def notes(self, where: str) -> list[str]:
        """One line per problem, and one line counting the non-finite numbers dropped."""
        lines = [f"{where}: {p}" for p in self.problems]
        if self.non_finite:
            lines.append(
                f"{where}: {self.non_finite} non-finite value(s) dropped (NaN, Inf), the first at "
                f"{self.first_non_finite!r}"
            )
        return lines


def _key_problem(key: Any) -> str | None:
    if not isinstance(key, str):
        return f"a key of type {type(key).__name__}: keys are strings"
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        shown = repr(key) if len(key) <= 80 else repr(key[:80]) + "..."
        return f"key {shown}: keys are 1-{MAX_KEY_LENGTH} printable characters"
    return None


def clean_nested_metrics(raw: Any) -> NestedMetrics:
    """Check metrics that may be nested (FLIP apps: ``{"loss": [..], "f1-score": {"Effusion": [..]}}``).

    The one rule for a validation or evaluation result's METRICS: a dict whose keys are 1-128 printable
    characters and whose values are numbers (python or numpy; a one-element tensor too), lists of them, or such
    dicts, at most MAX_NESTED_DEPTH levels deep and MAX_NESTED_NUMBERS numbers in all. Numbers become plain python
    ints/floats; a number that is not finite is dropped (counted). Anything else (a string, an array, bytes, a key
    that breaks the rule, a level too deep) is dropped on its own and named in ``problems``, never by its value.
    The result is strict JSON.

    Raises:
        ValueError: ``raw`` is not a dict, or holds more than MAX_NESTED_NUMBERS numbers (named, nothing kept).
    """
    if not isinstance(raw, Mapping):
        raise ValueError(f"metrics must be a dict, got {type(raw).__name__}")
    result = NestedMetrics(data={})
    count = [0]

    def place(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def walk(value: Any, path: str, depth: int) -> tuple[bool, Any]:
        """(keep, cleaned value)."""
        if isinstance(value, Mapping):
            if depth >= MAX_NESTED_DEPTH:
                result.problems.append(f"entry {path!r}: nested deeper than {MAX_NESTED_DEPTH} levels")
                return False, None
            out: dict[str, Any] = {}
            for key, item in value.items():
                problem = _key_problem(key)
                if problem:
                    result.problems.append(f"in {path!r}: {problem}" if path else problem)
                    continue
                keep, cleaned = walk(item, place(path, key), depth + 1)
                if keep:
                    out[key] = cleaned
            return True, out
        if isinstance(value, (list, tuple)):
            if depth >= MAX_NESTED_DEPTH:
                result.problems.append(f"entry {path!r}: nested deeper than {MAX_NESTED_DEPTH} levels")
                return False, None
            items = []
            for i, item in enumerate(value):
                keep, cleaned = walk(item, f"{path}[{i}]", depth + 1)
                if keep:
                    items.append(cleaned)
            return True, items
        number = to_number(value)
        if number is None:
            result.problems.append(f"entry {path!r} is a {type(value).__name__}: expected a number, a list or a dict")
            return False, None
        count[0] += 1
        if count[0] > MAX_NESTED_NUMBERS:
            raise ValueError(f"metrics hold more than {MAX_NESTED_NUMBERS} numbers")
        if finite_number(number) is None:
            result.non_finite += 1
            result.first_non_finite = result.first_non_finite or path
            return False, None
        return True, number

    _, result.data = walk(raw, "", 0)
    return result


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """Format metrics as ``name=value`` pairs on one line, floats to 4 significant digits ("" for none)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def weighted_means(per_site: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Each metric's mean over the sites that reported it, weighted by their ``num_samples`` (1 if absent);
    ``num_samples`` itself is summed. A mean that is not finite (huge values) is left out."""
    names = sorted({k for m in per_site.values() for k in m} - {NUM_SAMPLES, NUM_STEPS})
    result: dict[str, float] = {}
    for name in names:
        pairs = [(float(m.get(NUM_SAMPLES, 1) or 1), m[name]) for m in per_site.values() if name in m]
        total = sum(w for w, _ in pairs)
        mean = sum(w * v for w, v in pairs) / total
        if not math.isfinite(mean):  # w·v overflowed: the same mean from weights that sum to 1
            mean = sum(w / total * v for w, v in pairs)
        if math.isfinite(mean):  # never a NaN/Inf into metrics.json or the hub
            result[name] = mean
    if per_site:
        result[NUM_SAMPLES] = int(sum(m.get(NUM_SAMPLES, 0) for m in per_site.values()))
    return result
