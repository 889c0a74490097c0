"""Network failures in one vocabulary: a short reason, a retry line at INFO, and a bounded urllib3 retry.

Every source retries a bounded number of times, logs each wait at INFO as
``<service> unreachable (<reason>); retry 2/4 in 5 s`` (or ``<service> answered HTTP 503; ...``)
and, once the retries are spent, raises :class:`~btfm_core.errors.ServiceUnavailableError` with
one line naming the service, its URL (without credentials or query string) and what to try. The
bounds are constants of each source module and are stated in its docstring.
"""

from __future__ import annotations

import errno
import logging
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import urllib3.exceptions
from urllib3.util.retry import Retry

log = logging.getLogger(__name__)

#: Seconds to wait for a TCP connection before a try counts as failed (the read timeout is separate).
CONNECT_TIMEOUT_S = 10.0
#: HTTP statuses worth retrying: rate limit and server errors.
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Longest wait honoured from a ``Retry-After`` header (longer ones are cut to this).
RETRY_AFTER_MAX_S = 30.0
#: What to try when a service cannot be reached at all.
CHECK_NETWORK = "check the network connection and proxy settings (HTTPS_PROXY), then run again"


def safe_url(url: str) -> str:
    """``url`` without user/password and query string (signed URLs carry tokens there)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0]
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps (causes, contexts, urllib3 ``reason``s, exception args)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None),
                   getattr(current, "request_exception", None), *current.args]
        todo += [item for item in wrapped if isinstance(item, BaseException)]


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of the answer behind ``exc`` (a ``requests`` error with a response), if any."""
    for item in _chain(exc):
        status = getattr(getattr(item, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        status = getattr(item, "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def network_reason(exc: BaseException) -> str:
    """A short phrase saying why a request failed: ``connection refused``, ``DNS lookup failed``...

    Walks the whole exception chain (``requests`` wraps ``urllib3`` wraps ``socket``), so it works
    on what any HTTP library raises.
    """
    items = list(_chain(exc))

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(item, types) for item in items)

    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return "DNS lookup failed: no network, or a wrong host name"
    if has(ConnectionRefusedError):
        return "connection refused"
    if any(isinstance(item, OSError) and item.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH) for item in items):
        return "network unreachable"
    if has(requests.exceptions.ProxyError, urllib3.exceptions.ProxyError):
        return "the proxy refused or failed the connection (check HTTPS_PROXY)"
    if has(requests.exceptions.SSLError, urllib3.exceptions.SSLError, ssl.SSLError):
        return "TLS/SSL handshake failed (a proxy inspecting HTTPS? set REQUESTS_CA_BUNDLE to its certificate)"
    if has(requests.exceptions.ConnectTimeout) or (has(urllib3.exceptions.ConnectTimeoutError)
                                                     and not has(urllib3.exceptions.NewConnectionError)):
        return "connection timed out"
    if has(requests.exceptions.ReadTimeout, urllib3.exceptions.ReadTimeoutError, TimeoutError, socket.timeout):
        return "no answer before the timeout"
    if has(requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError, ConnectionResetError):
        return "the connection dropped mid-answer"
    for item in items:
        if isinstance(item, urllib3.exceptions.ResponseError):  # urllib3 gave up on retried statuses
            codes = re.findall(r"\b\d{3}\b", str(item))
            return f"kept answering HTTP {codes[0]}" if codes else _first_line(item)
    status = http_status(exc)
    return f"HTTP {status}" if status is not None else _first_line(exc)


def is_unreachable(exc: BaseException) -> bool:
    """True if the request never got an answer (refused, DNS, timeout, dropped, TLS, proxy)."""
    if http_status(exc) is not None:
        return False
    return any(isinstance(item, (requests.ConnectionError, requests.Timeout, urllib3.exceptions.NewConnectionError,
                                 urllib3.exceptions.TimeoutError, urllib3.exceptions.ProtocolError,
                                 ConnectionError, TimeoutError, socket.gaierror))
               for item in _chain(exc))


def describe_problem(exc: BaseException) -> str:
    """What went wrong, for a retry line: ``unreachable (<reason>)`` or ``answered HTTP <status>``."""
    status = http_status(exc)
    if status is None and is_unreachable(exc):
        return f"unreachable ({network_reason(exc)})"
    return f"answered HTTP {status}" if status is not None else f"failed ({network_reason(exc)})"


def log_retry(logger: logging.Logger, service: str, problem: str, retry: int, retries: int, delay: float) -> None:
    """Log one wait before a retry at INFO: ``<service> <problem>; retry <retry>/<retries> in <delay> s``.

    ``problem`` is e.g. ``unreachable (connection refused)`` or ``answered HTTP 503``.
    """
    logger.info("%s %s; retry %d/%d in %.3g s", service, problem, retry, retries, delay)


class _OwnRetryWarnings(logging.Filter):
    """Drop urllib3's ``Retrying (LoggedRetry(...)) after ...`` warning: :class:`LoggedRetry` logs its own line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (args and isinstance(args[0], LoggedRetry))


_OWN_RETRY_WARNINGS = _OwnRetryWarnings()


class LoggedRetry(Retry):
    """A urllib3 :class:`Retry` that logs each wait at INFO (see :func:`log_retry`).

    Args:
        service: the service named in the log lines (e.g. ``Earth Search STAC API``).
        **kwargs: :class:`urllib3.util.retry.Retry` arguments.
    """

    def __init__(self, *args: Any, service: str = "service", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service
        pool_log = logging.getLogger("urllib3.connectionpool")
        if _OWN_RETRY_WARNINGS not in pool_log.filters:
            pool_log.addFilter(_OWN_RETRY_WARNINGS)

    def new(self, **kw: Any) -> LoggedRetry:
        """A copy with ``kw`` changed (urllib3 calls it on every retry); keeps :attr:`service`."""
        fresh = super().new(**kw)
        fresh.service = self.service
        return fresh

    def _left(self, error: Exception | None) -> int:
        """Retries left of the kind the last failure counts against."""
        if error is not None and self._is_connection_error(error):
            kind = self.connect
        elif error is not None and self._is_read_error(error):
            kind = self.read
        elif error is not None:
            kind = self.other
        else:
            kind = self.status
        counts = [count for count in (self.total, kind) if isinstance(count, int)]
        return max(0, min(counts)) if counts else 0

    def sleep(self, response: Any = None) -> None:
        """Log the coming wait, then wait (``Retry-After`` capped at ``retry_after_max``, else back-off)."""
        last = self.history[-1] if self.history else None
        delay = self.get_retry_after(response) if self.respect_retry_after_header and response else None
        delay = delay if delay else self.get_backoff_time()
        if last is not None and last.status is not None:
            problem = f"answered HTTP {last.status}"
        else:
            reason = network_reason(last.error) if last is not None and last.error is not None else "no answer"
            problem = f"unreachable ({reason})"
        retry = len(self.history)
        log_retry(log, self.service, problem, retry, retry + self._left(last.error if last else None), delay)
        super().sleep(response)
