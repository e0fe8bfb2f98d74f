"""The rules every HTTP client of flip follows (FLIP's hub, a trust's data-access and imaging services), in one place.

- :func:`check_service_url`: a service's base URL is ``https://`` (``http://`` only for a loopback host, or a host
  the deployment lists in ``FLIP_HTTP_HOSTS``: FLIP runs its services on private Docker networks), holds no
  ``user:password@``, no query or fragment, no whitespace or control character, and names a host.
- :func:`check_header_name`: a key's header name is an HTTP token (no space, colon or newline).
- :func:`request`: never follows a redirect (a 3xx is a failure naming the Location's host, never re-sent);
  retries timeouts, connection errors, dropped connections (an answer cut short of its Content-Length too: http.client
  does not say so) and 5xx with capped exponential backoff inside a total deadline; never retries 401/403 or another 4xx; ``accept`` says which other answers mean success; an answer
  larger than ``max_bytes`` is refused without being read further.
- :func:`check_timeout`, :func:`check_attempts` and :class:`Retry` bound the knobs.

Messages name the service, the method and path, and never a key, a password, a URL's query or an answer's body
(a body can hold patient data).
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urljoin, urlsplit

from flip.errors import FlipError, PlatformError

#: the longest timeout of one request, in seconds
MAX_TIMEOUT = 300.0
#: the most attempts of one request
MAX_ATTEMPTS = 10
#: the longest sleep between two attempts, in seconds
MAX_SLEEP = 8.0
#: a request (all its attempts and sleeps) gives up after this many seconds by default
DEFAULT_DEADLINE = 120.0
#: the longest deadline allowed, in seconds
MAX_DEADLINE = 3600.0
#: the largest answer read by default, in bytes (a service's client may set its own bound)
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
_READ_CHUNK = 1024 * 1024
#: the largest body read of an answer ``accept`` takes as a success despite its error status
_ERROR_BODY_MAX = 1024 * 1024

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
URL_RULE = (
    "expected https://host[:port][/path] (http:// only for a loopback host: 127.0.0.0/8, ::1, localhost, or "
    "a host listed in FLIP_HTTP_HOSTS), without user:password@, query, fragment, whitespace or control "
    "characters"
)
#: an HTTP header name (RFC 9110 token)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")


def is_loopback(host: str) -> bool:
    """Return True if ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_host_name(host: str) -> bool:
    """Return True if ``host`` is a DNS name (at most 253 characters) or an IP address."""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_DNS_NAME.fullmatch(host)) and len(host) <= 253


def redact_url(url: str) -> str:
    """Return ``url`` fit for a message: anything before an ``@`` and any query or fragment replaced, <= 200 chars."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    cut = re.search(r"[?#]", rest)
    if cut:
        rest = rest[: cut.start()] + "?..."
    shown = scheme + sep + rest
    return shown if len(shown) <= 200 else shown[:200] + "..."


def check_http_hosts(value: object) -> frozenset[str]:
    """Return the host names of ``FLIP_HTTP_HOSTS`` (a comma-separated list, or an iterable), lower-cased.

    Raises:
        ValueError: an entry is not a DNS name or an IP address (named).
    """
    if value is None or value == "":
        return frozenset()
    items = value.split(",") if isinstance(value, str) else list(value)
    hosts = set()
    for item in items:
        host = item.strip().lower() if isinstance(item, str) else item
        if not isinstance(host, str) or not host:
            raise ValueError(f"FLIP_HTTP_HOSTS must be a comma-separated list of host names, got an entry {item!r}")
        if not is_host_name(host):
            raise ValueError(f"FLIP_HTTP_HOSTS: {host!r} is not a host name or an IP address")
        hosts.add(host)
    return frozenset(hosts)


def check_header_name(value: object, what: str = "header name") -> str:
    """Return ``value`` if it is an HTTP header name (a token of at most 128 characters), else raise ValueError."""
    if not (isinstance(value, str) and _TOKEN.fullmatch(value)):
        raise ValueError(
            f"{what} must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-, at most 128), got {value!r}"
        )
    return value


def check_service_url(url: object, what: str = "service URL", http_hosts: frozenset[str] = frozenset()) -> str:
    """Return ``url`` without trailing slashes if it is a safe base URL for a service, else raise ValueError.

    Args:
        url: the base URL, e.g. ``https://hub.example.org/api`` or ``http://127.0.0.1:8080/api``.
        what: what the URL is, for the message (e.g. ``hub URL``).
        http_hosts: hosts besides loopback that may be reached over ``http://`` (``FLIP_HTTP_HOSTS``).

    Raises:
        ValueError: naming the offending part and the rule; the message never holds a password or a query.
    """
    if not isinstance(url, str):
        raise ValueError(f"{what} must be a string, got {type(url).__name__}")
    shown = redact_url(url)

    def bad(why: str) -> ValueError:
        return ValueError(f"{what} {shown!r} is invalid: {why}; {URL_RULE}")

    for position, char in enumerate(url):
        if char.isspace() or unicodedata.category(char).startswith("C"):
            raise bad(f"it contains {char!r} at position {position}")
    if "@" in url:
        raise bad("it holds a user name or password (user:password@); the key belongs in its own variable")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise bad(f"it cannot be parsed ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise bad(f"the scheme must be https, got {parts.scheme or 'none'!r}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise bad("a base URL has no query or fragment")
    host = parts.hostname or ""
    if not host:
        raise bad("it names no host")
    if not is_host_name(host):
        raise bad(f"host {host!r} is not a DNS name or an IP address")
    if port == 0:
        raise bad("port 0 is not a port")
    if scheme == "http" and not is_loopback(host) and host.lower() not in http_hosts:
        raise bad(
            f"http:// sends the key in clear text: use https:// for host {host!r} (or list it in "
            f"FLIP_HTTP_HOSTS if it is on a private network)"
        )
    return url.rstrip("/")


def check_api_url(url: object, what: str = "hub URL", http_hosts: frozenset[str] = frozenset()) -> str:
    """:func:`check_service_url`, and the URL has a path: the API's prefix (FLIP's hub: ``/api``), without which
    every route would be missed (a host-only base gives ``/model/...``, which FLIP's hub does not serve).

    Raises:
        ValueError: as check_service_url, or the URL has no path (named).
    """
    checked = check_service_url(url, what, http_hosts)
    if not urlsplit(checked).path.strip("/"):
        raise ValueError(
            f"{what} {redact_url(checked)!r} is invalid: it must include the API's path, e.g. "
            f"{checked}/api (FLIP's hub serves its routes under /api)"
        )
    return checked


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_timeout(value: object, what: str = "timeout") -> float:
    """Return ``value`` as a float if it is a number of seconds in (0, MAX_TIMEOUT], else raise ValueError naming it."""
    if not (_is_number(value) and 0 < value <= MAX_TIMEOUT):  # the accepting form: NaN fails
        raise ValueError(f"{what} must be a number of seconds > 0 and <= {MAX_TIMEOUT:g}, got {value!r}")
    return float(value)


def check_attempts(value: object, what: str = "attempts") -> int:
    """Return ``value`` if it is an integer in [1, MAX_ATTEMPTS], else raise ValueError naming it."""
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ATTEMPTS):
        raise ValueError(f"{what} must be an integer from 1 to {MAX_ATTEMPTS} (attempts in all), got {value!r}")
    return value


def backoff_delays(attempts: int, backoff: float, max_sleep: float = MAX_SLEEP) -> list[float]:
    """Return the sleeps before attempts 2..``attempts``: ``backoff`` doubling each time, each at most ``max_sleep``."""
    return [min(max_sleep, backoff * 2.0**i) for i in range(attempts - 1)]


@dataclass(frozen=True)
class Retry:
    """How a request is retried.

    Args:
        attempts: tries in all, 1 to MAX_ATTEMPTS. Default 4.
        backoff: the first sleep in seconds, doubled after each attempt (0 to ``max_sleep``). Default 0.5.
        max_sleep: the longest sleep in seconds (0 to MAX_SLEEP). Default MAX_SLEEP (8).
        deadline: seconds after which no new attempt starts and a running one times out (0 to MAX_DEADLINE].
            Default DEFAULT_DEADLINE (120).

    Raises:
        ValueError: a value is out of its range (named).
    """

    attempts: int = 4
    backoff: float = 0.5
    max_sleep: float = MAX_SLEEP
    deadline: float = DEFAULT_DEADLINE

    def __post_init__(self) -> None:
        check_attempts(self.attempts)
        if not (_is_number(self.max_sleep) and 0 <= self.max_sleep <= MAX_SLEEP):
            raise ValueError(f"max_sleep must be a number of seconds from 0 to {MAX_SLEEP:g}, got {self.max_sleep!r}")
        if not (_is_number(self.backoff) and 0 <= self.backoff <= self.max_sleep):
            raise ValueError(
                f"backoff must be a number of seconds from 0 to max_sleep ({self.max_sleep:g}), got {self.backoff!r}"
            )
        if not (_is_number(self.deadline) and 0 < self.deadline <= MAX_DEADLINE):
            raise ValueError(f"deadline must be a number of seconds > 0 and <= {MAX_DEADLINE:g}, got {self.deadline!r}")

    def delays(self) -> list[float]:
        """The sleeps before attempts 2..attempts (see :func:`backoff_delays`)."""
        return backoff_delays(self.attempts, self.backoff, self.max_sleep)


@dataclass(frozen=True)
class Service:
    """A service as errors name it.

    Args:
        name: e.g. ``hub``.
        url_var: the variable of its URL, e.g. ``FLIP_API_INTERNAL_URL``.
        key_var: the variable of its key, e.g. ``INTERNAL_SERVICE_KEY``.
        error: the FlipError type raised on failure. Default PlatformError.
        meanings: what a 4xx status means at this service, added to the failure's message (e.g. 404: "unknown
            model"). Default: none.
        key_refused: the statuses that mean "the key was refused" at this service. Default (401, 403).
    """

    name: str
    url_var: str
    key_var: str
    error: type[FlipError] = PlatformError
    meanings: Mapping[int, str] = field(default_factory=dict)
    key_refused: tuple[int, ...] = (401, 403)


@dataclass(frozen=True)
class Reply:
    """A successful answer: its HTTP status, its body and the attempt (1-based) that got it."""

    status: int
    body: bytes
    attempt: int


#: ``accept(status, attempt)``: True if this non-2xx answer to this attempt (1-based) means success
Accept = Callable[[int, int], bool]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: urllib then raises HTTPError with the 3xx answer."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D102 - urllib's hook
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _location_host(location: str | None, url: str) -> str:
    """The host[:port] a redirect points to (never its credentials, path or query)."""
    if not location:
        return "no Location"
    try:
        target = urlsplit(urljoin(url, location))
        host, port = target.hostname, target.port
    except ValueError:
        return "an unreadable Location"
    if not host:
        return "a Location without a host"
    host = f"[{host}]" if ":" in host else host
    return repr(f"{host}:{port}" if port else host)


def _cause(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return type(reason).__name__ if isinstance(reason, BaseException) else type(exc).__name__


def _read_bounded(reply, max_bytes: int, sink: BinaryIO | None = None) -> bytes | None:
    """The answer's body (written to ``sink`` instead when given: then b""), or None if it is (or announces being)
    larger than ``max_bytes``: nothing more is read.

    Raises:
        http.client.IncompleteRead: the connection ended before the announced Content-Length (http.client's
            ``read(n)`` returns what came without saying so): a transient failure, retried by :func:`request`.
    """
    announced = reply.headers.get("Content-Length") if reply.headers else None
    announced = announced.strip() if announced is not None else ""
    length = int(announced) if announced.isascii() and announced.isdigit() else None
    if length is not None and length > max_bytes:
        return None
    chunks, size = [], 0
    while True:
        chunk = reply.read(min(_READ_CHUNK, max_bytes + 1 - size))
        if not chunk:
            bodiless = getattr(reply, "_method", None) == "HEAD" or getattr(reply, "status", None) in (204, 304)
            chunked = getattr(reply, "chunked", False)  # http.client ignores Content-Length then
            if length is not None and size < length and not bodiless and not chunked:
                raise http.client.IncompleteRead(b"", length - size)
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            return None
        if sink is not None:
            sink.write(chunk)
        else:
            chunks.append(chunk)


def request(
    service: Service,
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    retry: Retry = Retry(),
    accept: Accept | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    sink: BinaryIO | None = None,
    too_large: type[FlipError] | None = None,
) -> Reply:
    """Send one HTTP request by the rules of this module and return the successful answer.

    A 2xx answer, or a 4xx/5xx answer ``accept(status, attempt)`` approves, is success. Timeouts, connection
    errors, dropped connections and 5xx are retried (``retry``); 401/403 and other 4xx are not; a 3xx is a failure
    naming the Location's host and is neither followed nor re-sent.

    Args:
        service: who is asked, for messages and the error type.
        method: the HTTP method.
        url: the full URL (its base checked with :func:`check_service_url`).
        body: the request body, or None.
        headers: request headers (the key's header among them); never shown.
        timeout: seconds per attempt (cut to what is left of ``retry.deadline``).
        retry: attempts, backoff and deadline.
        accept: which non-2xx answers mean success, given the status and the attempt (1-based); e.g. a 409
            "already in that state" on a retry of a request whose first attempt may have been recorded.
        max_bytes: the largest answer body read (>= 1); a larger one is refused, not retried (it would be as
            large again). Default DEFAULT_MAX_BYTES (16 MiB).
        sink: a binary file the successful answer's body is written to (emptied before each attempt), instead of
            ``Reply.body`` (then b""): a download that need not fit in memory.
        too_large: the error type raised for an answer over ``max_bytes``. Default ``service.error``.

    Raises:
        FlipError: of type ``service.error``, with a short cause: a redirect (naming the Location's host), a
            refused key (naming ``service.key_var``), another 4xx (with its meaning at the service), an answer
            over ``max_bytes``, or no success after the attempts or deadline. Never the body of an answer.
    """
    error, name = service.error, service.name
    where = f"{method} {urlsplit(url).path or '/'}"
    delays = retry.delays()
    started = time.monotonic()
    last, attempt, out_of_time = "no attempt", 0, False
    for attempt in range(1, retry.attempts + 1):
        left = retry.deadline - (time.monotonic() - started)
        if left <= 0:
            attempt, out_of_time = attempt - 1, True
            break
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        if sink is not None:
            sink.seek(0)
            sink.truncate()
        try:
            with _OPENER.open(req, timeout=min(timeout, left)) as reply:
                payload = _read_bounded(reply, max_bytes, sink)
                if payload is None:
                    raise (too_large or error)(
                        f"{name} answered {where} with more than {max_bytes} bytes: refused unread (the "
                        f"bound is {max_bytes} bytes)"
                    )
                return Reply(reply.status, payload, attempt)
        except urllib.error.HTTPError as exc:
            code = exc.code
            if 300 <= code < 400:
                host = _location_host(exc.headers.get("Location") if exc.headers else None, url)
                exc.close()
                raise error(
                    f"{name} answered {where} with a redirect (HTTP {code}) to {host}: redirects are not "
                    f"followed, so nothing was delivered there; check {service.url_var}"
                ) from exc
            if accept is not None and accept(code, attempt):
                try:
                    payload = _read_bounded(exc, min(max_bytes, _ERROR_BODY_MAX)) or b""
                except (OSError, http.client.HTTPException):
                    payload = b""
                exc.close()
                return Reply(code, payload, attempt)
            exc.close()
            if code in service.key_refused:
                raise error(f"{name} refused the API key (HTTP {code}): check {service.key_var}") from exc
            if code < 500:
                meaning = service.meanings.get(code)
                raise error(f"{name} rejected {where} (HTTP {code}" + (f": {meaning})" if meaning else ")")) from exc
            last = f"HTTP {code}"
        except http.client.InvalidURL as exc:  # not transient: the same URL fails again
            raise error(f"{name}: {where} is not a valid request URL") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            last = _cause(exc)
        if attempt < retry.attempts:
            pause = delays[attempt - 1]
            if time.monotonic() - started + pause >= retry.deadline:
                out_of_time = True
                break
            time.sleep(pause)
    tries = f"{attempt} attempt" + ("" if attempt == 1 else "s")
    late = f"; gave up at the {retry.deadline:g} s deadline" if out_of_time else ""
    raise error(f"{name} unreachable after {tries} ({last}) for {where}{late}")
