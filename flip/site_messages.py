"""What a site may send the server: one schema (pydantic v2), checked where each value arrives.

A site is another organisation's machine: anything it puts in a result's headers or DXO meta reaches the server's
metrics.json, run report, results JSON and the hub. So every such value is checked on arrival against this
module, and a bad one is dropped (the server logs why, naming the site) rather than carried on to fail later,
where an exception would end the run without its upload.

- metrics: ``{name: finite number}`` with flip.metrics' rules (a bad entry is dropped on its own, the others are
  kept);
- validation and evaluation results: numbers, possibly nested in dicts and lists (FLIP's validators and
  evaluators), with flip.metrics.clean_nested_metrics' rule (a bad or non-finite entry is dropped on its own);
- privacy annotations (``flip_privacy``): a list of :class:`PrivacyRecord`, what each privacy filter applied;
- a stage (``flip_stage``): a name (letters, digits, '.', '_', '-');
- an error reason (``flip_error_reason``): a short string;
- a site name (``flip_site_name``): a name.

Problems name the field, never the value (it could be data).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from flip.checks import check_path_name
from flip.errors import SiteMessageError
from flip.metrics import MAX_METRICS, clean_nested_metrics, finite_number, metric_problem

#: the longest error reason a site may send (longer ones are refused, not cut: they are not a short reason)
MAX_REASON_CHARS = 2000
#: the most privacy filters one update may record, and stages one filter may report
MAX_PRIVACY_RECORDS = 16
MAX_PARTS = 64


def _finite(value: Any) -> int | float:
    number = finite_number(value)
    if number is None:
        raise ValueError("expected a finite number")
    return number


def _name(value: Any) -> str:
    if not isinstance(value, str):  # numpy strings are str (and become plain str); arrays, bytes, ints are not
        raise ValueError(f"expected a name (a string), got {type(value).__name__}")
    try:
        return check_path_name("name", str(value))
    except ValueError:
        raise ValueError("expected 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit") from None


FiniteNumber = Annotated[int | float, BeforeValidator(_finite)]
Fraction = Annotated[FiniteNumber, Field(ge=0, le=1)]
Name = Annotated[str, BeforeValidator(_name)]


class _Record(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class PartStats(_Record):
    """One part (stage) of a filtered update: the fractions of values shared and clipped."""

    shared: Fraction
    clipped: Fraction


class PrivacyRecord(_Record):
    """What one privacy filter applied to an update (settings and fractions: never values)."""

    filter: Name
    off: bool | None = None
    percentile: FiniteNumber | None = None
    gamma: FiniteNumber | None = None
    parts: Annotated[dict[Name, PartStats], Field(max_length=MAX_PARTS)] | None = None
    clip_norm: FiniteNumber | None = None
    noise_multiplier: FiniteNumber | None = None
    delta: FiniteNumber | None = None
    epsilon: FiniteNumber | None = None
    next_epsilon: FiniteNumber | None = None
    max_epsilon: FiniteNumber | None = None
    released: Annotated[int, Field(ge=0)] | None = None
    site_policy: bool | None = None
    deferred: bool | None = None
    integer_entries: Annotated[int, Field(ge=0)] | None = None
    integer_entries_withheld: Annotated[int, Field(ge=0)] | None = None
    #: which guarantee an ε is: per record (DP-SGD at the site) or per site (the whole update), and its accountant
    level: Literal["record", "client"] | None = None
    accountant: Name | None = None
    max_grad_norm: FiniteNumber | None = None
    sample_rate: Fraction | None = None
    steps: Annotated[int, Field(ge=0)] | None = None


_PRIVACY = TypeAdapter(Annotated[list[PrivacyRecord], Field(max_length=MAX_PRIVACY_RECORDS)])
_NAME = TypeAdapter(Name)
_REASON = TypeAdapter(Annotated[str, Field(min_length=1, max_length=MAX_REASON_CHARS)], config=ConfigDict(strict=True))


def _problem(field: str, exc: ValidationError) -> str:
    """``field[0].parts: expected ...`` for the first error (input values are never included)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    first = errors[0]
    where = field + "".join(f"[{p}]" if isinstance(p, int) else f".{str(p)[:64]}" for p in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"


def privacy_annotations(raw: Any, field: str = "flip_privacy") -> list[dict[str, Any]]:
    """The privacy records of an update (``[]`` for none), as plain dicts with the keys the site set.

    Raises:
        SiteMessageError: naming the first bad field.
    """
    if raw is None:
        return []
    try:
        records = _PRIVACY.validate_python(raw)
    except ValidationError as exc:
        raise SiteMessageError(_problem(field, exc)) from None
    return [r.model_dump(exclude_unset=True) for r in records]


def stage(raw: Any, field: str = "flip_stage") -> str | None:
    """The stage an update was trained in (None for none).

    Raises:
        SiteMessageError: it is not a name.
    """
    return None if raw is None else name(raw, field)


def name(raw: Any, field: str) -> str:
    """A name (a site's, a stage's).

    Raises:
        SiteMessageError: it is not a name.
    """
    try:
        return _NAME.validate_python(raw)
    except ValidationError as exc:
        raise SiteMessageError(_problem(field, exc)) from None


def error_reason(raw: Any, field: str = "flip_error_reason") -> str:
    """A site's reason for a failure: a non-empty string of at most MAX_REASON_CHARS characters (the caller still
    shortens it and masks secrets before it leaves the server).

    Raises:
        SiteMessageError: it is not such a string.
    """
    try:
        return str(_REASON.validate_python(raw))
    except ValidationError as exc:
        raise SiteMessageError(_problem(field, exc)) from None


def metrics(raw: Any, field: str = "metrics") -> tuple[dict[str, int | float], list[str]]:
    """The valid entries of a site's metrics (or validation results) and why each other entry was dropped.

    A bad entry (a name that breaks flip.metrics' rule, a non-number, NaN/Inf) is dropped on its own; the whole
    dict is dropped if it is not a dict or holds more than MAX_METRICS entries.
    """
    if raw is None:
        return {}, []
    if not isinstance(raw, Mapping):
        return {}, [f"{field}: expected a dict of metrics, got {type(raw).__name__}"]
    if len(raw) > MAX_METRICS:
        return {}, [f"{field}: {len(raw)} entries, at most {MAX_METRICS} are allowed"]
    clean: dict[str, int | float] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        problem = metric_problem(key, value)
        if problem:
            dropped.append(f"{field}: {problem}")
        else:
            clean[key] = finite_number(value)
    return clean, dropped


def nested_metrics(raw: Any, field: str = "result") -> tuple[dict[str, Any] | None, list[str]]:
    """The valid part of a validation or evaluation result (numbers nested in dicts and lists) and why each other
    part was dropped (its place named, never its value; non-finite numbers counted in one line).

    Returns:
        (None, reasons) when nothing can be kept: not a dict, or more numbers than allowed.
    """
    try:
        checked = clean_nested_metrics(raw)
    except ValueError as exc:
        return None, [f"{field}: {exc}"]
    return checked.data, checked.notes(field)
