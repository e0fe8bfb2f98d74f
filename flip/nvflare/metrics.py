"""FLIP's metrics path (FLIP: flip-utils/flip/nvflare/metrics.py): a site's app sends a value, the server gets it.

At a site, ``send_metrics_value(label, value, fl_ctx, round=None)`` fires the federation-scoped event
``"_send_result"`` (``FlipEvents.SEND_RESULT``) carrying a METRICS DXO ``{"label", "value"[, "round"]}``; NVFlare's
fed-event runner forwards it to the server, which fires it again with the site's name in the header
``FedEventHeader.ORIGIN``. There, :func:`parse_metric_event` turns one event into a :class:`MetricEvent` or refuses it
with a reason naming the site (:class:`MetricDropped`), and :class:`MetricEventLog` keeps what arrives in order.

Only a number leaves the site this way (python or numpy, NaN included, sent as a plain python number): an event
is not filtered like a task result, so anything else is not sent (a warning names the label and the type).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.fl_constant import EventScope, FedEventHeader, FLContextKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from flip.checks import check_model_id, check_path_name, is_int
from flip.constants import FlipEvents
from flip.errors import MetricDropped
from flip.metrics import finite_number, to_number

#: the event origin FLIP's client sets on a metrics event
EVENT_ORIGIN = "flip_client"
#: the keys of a metrics event's DXO data
LABEL, VALUE, ROUND = "label", "value", "round"
#: our addition to FLIP's event: the site's order stamp (a monotonic clock), so that the server keeps a label's
#: values in the order they were sent (federated events may arrive in another order)
SEQ = "seq"
#: the longest label taken (FLIP's labels are short names such as "Train loss (G)" or "TRAIN-F1-SCORE")
MAX_LABEL_LENGTH = 128

_log = logging.getLogger(__name__)


def _logger(flip: Any) -> logging.Logger:
    logger = getattr(flip, "logger", None)
    return logger if isinstance(logger, logging.Logger) else _log


def send_metrics_value(label: str, value: float, fl_ctx: FLContext, round: int | None = None, flip: Any = None) -> None:
    """Send one metric value from a site's task to the server (event ``"_send_result"``, federation scope).

    A value that cannot be sent (not a number, or a ``round`` that is not an integer) is logged as a warning and
    not sent: a metric never fails the task. NaN and infinities are sent; the server drops them with a reason.

    Args:
        label: the metric's name, e.g. ``"TRAIN_LOSS"`` or ``"Train loss (G)"``.
        value: a python or numpy number (a one-element tensor too); sent as a python int or float.
        fl_ctx: the task's FLContext.
        round: the x value to plot it at (an integer >= 0); None: the server's current round.
        flip: the platform whose ``logger`` logs (FLIP's argument); default: this module's logger.

    Raises:
        TypeError: ``label`` is not a str or ``fl_ctx`` is not an FLContext (as FLIP).
    """
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__}")
    if not isinstance(fl_ctx, FLContext):
        raise TypeError(f"fl_ctx must be an nvflare FLContext, got {type(fl_ctx).__name__}")
    log = _logger(flip)
    engine = fl_ctx.get_engine()
    if engine is None:
        log.error("metric %r not sent: the FLContext has no engine", label)
        return
    number = to_number(value)
    if number is None:
        log.warning("metric %r not sent: its value is of type %s, expected a number", label, type(value).__name__)
        return
    data: dict[str, Any] = {LABEL: label, VALUE: number}
    if round is not None:
        if not (is_int(round) and round >= 0):
            log.warning("metric %r not sent: round must be an integer >= 0 or None, got %r", label, round)
            return
        data[ROUND] = int(round)
    data[SEQ] = time.monotonic_ns()
    event_data = DXO(data_kind=DataKind.METRICS, data=data).to_shareable()
    fl_ctx.set_prop(FLContextKey.EVENT_DATA, event_data, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.EVENT_SCOPE, EventScope.FEDERATION, private=True, sticky=False)
    fl_ctx.set_prop(FLContextKey.EVENT_ORIGIN, EVENT_ORIGIN, private=True, sticky=False)
    engine.fire_event(FlipEvents.SEND_RESULT, fl_ctx)
    log.debug("metric %r sent", label)


# -- the server ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricEvent:
    """One metric value a site sent: ``round`` is the event's own, else the server's round when it arrived."""

    site: str
    label: str
    value: float | int
    round: int | None
    seq: int | None = None  # the site's order stamp, when it sent one


def _label_problem(label: Any) -> str | None:
    if not isinstance(label, str):
        return f"a label of type {type(label).__name__}: expected a str"
    if not 1 <= len(label) <= MAX_LABEL_LENGTH or not label.isprintable():
        shown = repr(label) if len(label) <= 80 else repr(label[:80]) + "..."
        return f"label {shown}: expected 1-{MAX_LABEL_LENGTH} printable characters"
    return None


def parse_metric_event(event_data: Any, current_round: int | None = None) -> MetricEvent:
    """Return the metric of one ``"_send_result"`` event as the server receives it.

    Args:
        event_data: the event's Shareable (``FLContextKey.EVENT_DATA``), with the site in ``FedEventHeader.ORIGIN``.
        current_round: the server's round, given to a metric sent without ``round`` (None: left None).

    Raises:
        MetricDropped: the reason, naming the site (or "an unknown site"): no Shareable, no or a bad origin, not
            a METRICS DXO, keys other than label/value/round, a label that is not 1-128 printable characters, a
            value that is not a finite number (NaN, Inf, a string...), a round that is not an integer >= 0.
    """
    if not isinstance(event_data, Shareable):
        raise MetricDropped(
            f"a metrics event from an unknown site dropped: its data is a {type(event_data).__name__}, not a Shareable"
        )
    origin = event_data.get_header(FedEventHeader.ORIGIN)
    try:
        site = check_path_name("site name", origin)
    except ValueError as exc:
        raise MetricDropped(f"a metrics event from an unknown site dropped: {exc}") from None
    where = f"a metric from site {site!r} dropped"
    try:
        dxo = from_shareable(event_data)
    except Exception as exc:  # NVFlare raises several types for a malformed DXO
        raise MetricDropped(f"{where}: the event holds no DXO ({type(exc).__name__})") from exc
    if dxo.data_kind != DataKind.METRICS or not isinstance(dxo.data, dict):
        raise MetricDropped(f"{where}: expected a METRICS DXO of label and value, got {dxo.data_kind}")
    extra = sorted(map(str, set(dxo.data) - {LABEL, VALUE, ROUND, SEQ}))
    if extra or LABEL not in dxo.data or VALUE not in dxo.data:
        raise MetricDropped(
            f"{where}: expected the keys label, value and optionally round and seq, got {sorted(map(str, dxo.data))}"
        )
    label = dxo.data[LABEL]
    problem = _label_problem(label)
    if problem:
        raise MetricDropped(f"{where}: {problem}")
    raw = dxo.data[VALUE]
    value = finite_number(raw)
    if value is None:
        kind = (
            "not finite (NaN, Inf or beyond the float range)"
            if to_number(raw) is not None
            else f"of type {type(raw).__name__}: expected a number"
        )
        raise MetricDropped(f"{where}: metric {label!r} is {kind}")
    round_ = dxo.data.get(ROUND)
    if round_ is not None and not (is_int(round_) and round_ >= 0):
        raise MetricDropped(f"{where}: metric {label!r} has round {round_!r}: expected an integer >= 0")
    seq = dxo.data.get(SEQ)
    if seq is not None and not (is_int(seq) and seq >= 0):
        raise MetricDropped(f"{where}: metric {label!r} has seq {seq!r}: expected an integer >= 0")
    return MetricEvent(
        site=site,
        label=label,
        value=value,
        round=int(round_) if round_ is not None else current_round,
        seq=int(seq) if seq is not None else None,
    )


@dataclass
class MetricEventLog:
    """The metrics events the server received, in arrival order (a label repeated in a round stays repeated).

    Attributes:
        events: the metrics taken, oldest first.
        dropped: the reasons of the events refused, oldest first.
    """

    events: list[MetricEvent] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    def add(self, event_data: Any, current_round: int | None = None) -> MetricEvent | None:
        """Take one event: return its metric, or None after recording why it was dropped."""
        try:
            event = parse_metric_event(event_data, current_round)
        except MetricDropped as exc:
            self.dropped.append(str(exc))
            return None
        self.events.append(event)
        return event

    def extend(self, events: Iterable[Any], current_round: int | None = None) -> None:
        for event_data in events:
            self.add(event_data, current_round)


def handle_metrics_event(event_data: Shareable, global_round: int, model_id: str, flip: Any = None) -> None:
    """FLIP's server-side handler: send one site's metric to the platform (``flip.send_metrics``).

    A metric sent without ``round`` gets ``global_round``. A refused event is logged with its reason, not raised.

    Args:
        event_data: the event's Shareable.
        global_round: the server's current round (0-based).
        model_id: the model's UUID.
        flip: the platform; default: ``FLIP()``.

    Raises:
        ValueError: model_id is not a UUID. TypeError: global_round is not an int or event_data not a Shareable.
    """
    model_id = check_model_id(model_id)
    if not is_int(global_round):
        raise TypeError(f"global_round must be an int, got {type(global_round).__name__}")
    if not isinstance(event_data, Shareable):
        raise TypeError(f"event_data must be a Shareable, got {type(event_data).__name__}")
    if flip is None:
        from flip import FLIP

        flip = FLIP()
    try:
        event = parse_metric_event(event_data, int(global_round))
    except MetricDropped as exc:
        _logger(flip).warning("%s", exc)
        return
    flip.send_metrics(
        client_name=event.site, model_id=model_id, label=event.label, value=event.value, round=event.round
    )
