"""Every argument and setting check of flip, one rule each (no nvflare import).

Each check returns the value (sometimes normalised) or raises ``ValueError`` naming the argument, the value and
what is allowed. Checks are written in the accepting form (``if not (low <= v <= high)``), so NaN always fails.
Name rules use ``re.fullmatch``: a ``$``-anchored ``match`` would accept a trailing newline.
"""

from __future__ import annotations

import math
import numbers
import re
import uuid
from collections.abc import Iterable
from typing import Any

_PATH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_OBJECT_KEY = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
_COMPONENT_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")
BUCKET_RULE = "3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
PATH_NAME_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_number(value: Any) -> bool:
    """True for a real number (python or numpy), False for bool and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """True for an integer (python or numpy), False for bool and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _range_text(minimum, maximum, low_open: bool, high_open: bool) -> str:
    """``>= 1``, ``< 5``, ``in [0, 100]`` or ``in (0, 1)``: the bounds as a reader expects them."""
    if minimum is not None and maximum is not None:
        return f"in {'(' if low_open else '['}{minimum:g}, {maximum:g}{')' if high_open else ']'}"
    if minimum is not None:
        return f"{'>' if low_open else '>='} {minimum:g}"
    if maximum is not None:
        return f"{'<' if high_open else '<='} {maximum:g}"
    return ""


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an int if it is an integer in [minimum, maximum] (either bound optional)."""
    if not (is_int(value) and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)):
        bounds = _range_text(minimum, maximum, False, False)
        raise ValueError(f"{name} must be an integer{' ' + bounds if bounds else ''}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum`` (default 1), else raise ValueError naming ``name``."""
    return check_int(name, value, minimum=minimum)


def check_number(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a float if it is a finite number within the bounds (open or closed, either optional)."""
    ok = is_number(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if low_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if high_open else value <= maximum
    if not ok:
        bounds = _range_text(minimum, maximum, low_open, high_open)
        raise ValueError(f"{name} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is a finite number > 0."""
    return check_number(name, value, 0, low_open=True)


def check_fraction(name: str, value: Any) -> float:
    """Return ``value`` as a float if it is in [0, 1)."""
    return check_number(name, value, 0, 1, high_open=True)


def optional(check, name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
    """``None``, or ``check(name, value, ...)``; a refusal says None is allowed too."""
    if value is None:
        return None
    try:
        return check(name, value, *args, **kwargs)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(message.replace(", got ", " or None, got ", 1) if ", got " in message else message) from None


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is True or False (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``."""
    choices = list(choices)
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False, max_length: int = 10_000) -> str:
    """Return ``value`` if it is a string without control characters (newlines, NUL...), non-empty unless
    ``empty``, at most ``max_length`` characters."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    if not value and not empty:
        raise ValueError(f"{name} must not be empty")
    if len(value) > max_length:
        raise ValueError(f"{name} must be at most {max_length} characters, got {len(value)}")
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"{name} must not contain control characters, got {value!r}")
    return value


def check_path_name(kind: str, value: Any) -> str:
    """Return ``value`` if it is safe as one path component (a site name, a job id, a run id)."""
    if not isinstance(value, str) or not _PATH_NAME.fullmatch(value) or value in (".", ".."):
        raise ValueError(f"{kind} {value!r} is invalid: expected {PATH_NAME_RULE}")
    return value


def check_component_id(name: str, value: Any, *, empty: bool = False) -> str:
    """Return ``value`` if it is a component id of the job (letters, digits, '_', '.', '-'; '' if ``empty``)."""
    if empty and value == "":
        return value
    if not isinstance(value, str) or not _COMPONENT_ID.fullmatch(value):
        allowed = " (or '' for none)" if empty else ""
        raise ValueError(
            f"{name} must be a component id: a letter or '_' then letters, digits, '_', '.', '-'"
            f"{allowed}, got {value!r}"
        )
    return value


def check_model_id(model_id: Any) -> str:
    """Return the canonical form of ``model_id`` if it is a UUID, else raise ValueError naming it."""
    if isinstance(model_id, str) and re.fullmatch(r"[0-9A-Fa-f]{8}-?(?:[0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}", model_id):
        return str(uuid.UUID(model_id))
    raise ValueError(f"model_id must be a UUID such as '0b4f3c5e-8d3a-4c55-9a5e-2f1d6c7b8a90', got {model_id!r}")


def check_bucket_name(name: Any) -> str:
    """Return ``name`` if it is a valid S3 bucket name, else raise ValueError naming it and the rule."""
    if not isinstance(name, str) or not _BUCKET.fullmatch(name) or ".." in name or _IPV4.fullmatch(name):
        raise ValueError(f"bucket name {name!r} is invalid: a bucket name is {BUCKET_RULE}")
    return name


def check_object_key(key: Any) -> str:
    """Return ``key`` if it is a safe relative object key (no '..', no absolute path), else raise ValueError."""
    if not isinstance(key, str) or not _OBJECT_KEY.fullmatch(key) or any(p in (".", "..") for p in key.split("/")):
        raise ValueError(
            f"object key {key!r} is invalid: expected names of letters, digits, '.', '_', '-' joined by '/'"
        )
    return key


def check_relative_name(arg: str, value: Any, suffix: str = "") -> str:
    """Return ``value`` if it is a relative path of safe names (an object key's rule) ending in ``suffix``."""
    try:
        safe = check_object_key(value).endswith(suffix)
    except ValueError:
        safe = False
    if not safe:
        need = f" ending in {suffix!r}" if suffix else ""
        raise ValueError(f"{arg} must be a relative path of letters, digits, '.', '_', '-'{need}, got {value!r}")
    return value


def check_regex(name: str, value: Any) -> str | None:
    """Return ``value`` if it is None or a valid regular expression."""
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise TypeError(type(value).__name__)
        re.compile(value)
    except (re.error, TypeError) as exc:
        raise ValueError(f"{name} must be a regular expression or None, got {value!r}") from exc
    return value


def check_port(name: str, value: Any) -> int:
    """Return ``value`` if it is a TCP port (1-65535)."""
    if not (is_int(value) and 1 <= value <= 65535):
        raise ValueError(f"{name} must be a TCP port (1-65535), got {value!r}")
    return int(value)


def check_timeout_seconds(name: str, value: Any, *, zero_means_none: bool = False) -> int:
    """Return ``value`` if it is a whole number of seconds >= 1 (or 0 when ``zero_means_none``: no timeout)."""
    minimum = 0 if zero_means_none else 1
    if not (is_int(value) and value >= minimum):
        none = " (0: no timeout)" if zero_means_none else ""
        raise ValueError(f"{name} must be a whole number of seconds >= {minimum}{none}, got {value!r}")
    return int(value)


def check_percentile(percentile: Any) -> float:
    """Return ``percentile`` as float if it is a number in [0, 100], else raise ValueError naming it (the percentile
    privacy policy's share of the largest updates)."""
    return check_number("percentile", percentile, 0, 100)


def check_gamma(gamma: Any) -> float:
    """Return ``gamma`` as float if it is a finite number > 0, else raise ValueError naming it (the percentile
    privacy policy's bound on a shared value)."""
    return check_positive("gamma", gamma)
