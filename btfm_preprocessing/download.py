"""Whole-file HTTP downloads that are never mistaken for complete when they are not.

Used by sources that cannot be read in windows (ASF GRD zips, HyP3 products). A download goes
to ``<name>.part`` and is renamed only after its size (and checksum, when the service gives
one) match; an interrupted download resumes from the ``.part`` file with a ``Range`` request.

Timeouts, refused or dropped connections, 429 and 5xx answers are retried, each wait logged at
INFO (``download of X.zip failed (connection refused); retry 1/4 in 1 s``). With the defaults
(:data:`DOWNLOAD_ATTEMPTS` = 5 tries, waits 1, 2, 4, 8 s) a host that refuses connections or has
no DNS entry is given up after about 15 s; one that drops packets after 5 x 10 s (connect timeout,
:data:`~btfm_preprocessing.network.CONNECT_TIMEOUT_S`) + 15 s = 65 s. A ``Retry-After`` is
honoured up to 30 s per wait. A try that stalls mid-file fails after ``timeout`` (60 s) without
data; the next one resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from btfm_core.errors import CredentialsError, DownloadError
from btfm_core.fileio import file_digest
from btfm_core.progress import progress
from btfm_preprocessing.network import (
    CHECK_NETWORK,
    CONNECT_TIMEOUT_S,
    RETRY_AFTER_MAX_S,
    RETRY_STATUS,
    log_retry,
    network_reason,
    safe_url,
)
from btfm_preprocessing.traffic import NetworkCounter

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 16
#: Tries of one download (each resumes where the last one stopped).
DOWNLOAD_ATTEMPTS = 5
#: First retry wait in seconds, doubled after every failed try.
DOWNLOAD_BACKOFF_S = 1.0


@dataclass(frozen=True)
class Expected:
    """What a complete file looks like, as announced by the service (None: unknown)."""

    size: int | None = None
    md5: str | None = None


def check_complete(path: Path, expected: Expected) -> None:
    """Raise :class:`DownloadError` if ``path`` does not have the expected size and checksum."""
    size = path.stat().st_size
    if expected.size is not None and size != expected.size:
        raise DownloadError(f"{path.name}: got {size} bytes, expected {expected.size}")
    if expected.md5 is not None and file_digest(path, "md5") != expected.md5.lower():
        raise DownloadError(f"{path.name}: MD5 checksum differs from the one the service announced")


class _Retryable(Exception):
    """A failed try worth repeating (429, 5xx, a short read)."""


def _without_query(url: str) -> str:
    """``url`` without its query string (signed URLs carry tokens there)."""
    return url.split("?", 1)[0]


def _scrub(message: str, url: str) -> str:
    """``message`` with ``url``'s query string, and any other query string, removed."""
    return re.sub(r"\?[^\s'\")]*", "?…", message.replace(url, _without_query(url)))


def _sleep_for(attempt: int, base: float, response: requests.Response | None) -> float:
    """Seconds to wait before try ``attempt + 2``: ``Retry-After`` (capped), else ``base * 2 ** attempt``."""
    retry_after = response.headers.get("Retry-After") if response is not None else None
    if retry_after and retry_after.strip().isdigit():
        return min(float(retry_after), RETRY_AFTER_MAX_S)
    return base * 2 ** attempt


def _nothing_left(response: requests.Response, url: str) -> bool:
    """True for 416 (the part file is already whole, or wrong); raise for answers that carry no file.

    Raises:
        CredentialsError: 401/403.
        _Retryable: 429/5xx.
        DownloadError: any other 4xx.
    """
    if response.status_code in (401, 403):
        raise CredentialsError(f"{response.status_code} from {_without_query(url)}: the login was "
                               "rejected or lacks access (check the credentials named in README)")
    if response.status_code in RETRY_STATUS:
        raise _Retryable(f"HTTP {response.status_code}")
    if response.status_code == 416:
        return True
    if response.status_code >= 400:
        raise DownloadError(f"HTTP {response.status_code} for {_without_query(url)}: the file is not "
                            "available there (check the product or search again)")
    return False


def _write_part(response: requests.Response, part: Path, have: int, name: str, expected: Expected,
                traffic: NetworkCounter | None) -> None:
    """Append the answer's body to ``part`` (``have`` bytes already there; a 200 starts over), counted in ``traffic``.

    Raises:
        _Retryable: the body ended before ``expected.size`` bytes.
    """
    if have and response.status_code != 206:  # server ignored Range: start over
        have = 0
    total = int(response.headers.get("Content-Length", 0)) + have or expected.size
    with part.open("ab" if have else "wb") as handle, progress(total=total, initial=have, unit="B", desc=name) as bar:
        for chunk in response.iter_content(CHUNK_BYTES):
            handle.write(chunk)
            bar.update(len(chunk))
            if traffic is not None:
                traffic.add(len(chunk))
    if expected.size is not None and part.stat().st_size < expected.size:
        raise _Retryable(f"connection ended after {part.stat().st_size} of {expected.size} bytes")


def download(url: str, dest: Path, session: requests.Session, expected: Expected = Expected(), *,
             attempts: int = DOWNLOAD_ATTEMPTS, backoff: float = DOWNLOAD_BACKOFF_S, timeout: float = 60.0,
             sleep: Callable[[float], None] = time.sleep, traffic: NetworkCounter | None = None) -> Path:
    """Download ``url`` to ``dest`` unless a complete ``dest`` exists; return ``dest``.

    Args:
        url: file URL (redirects, e.g. to an authenticated bucket, are followed).
        dest: final path; the partial file is ``dest`` + ``.part``.
        session: an HTTP session carrying the service's authentication.
        expected: size and MD5 announced by the service; a file that does not match is not kept.
        attempts: tries before giving up (each resumes where the last one stopped).
        backoff: first retry delay in seconds, doubled each time (``Retry-After`` wins, up to 30 s).
        timeout: seconds without data before a try counts as failed (connecting has 10 s).
        sleep: how to wait between tries (tests pass a no-op).
        traffic: counts the bytes received (None: not counted).

    Raises:
        CredentialsError: the service answered 401/403 (login missing or rejected).
        DownloadError: still incomplete after ``attempts`` tries, or a checksum mismatch.
    """
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + PART_SUFFIX)
    last_error = "no attempt made"
    for attempt in range(attempts):
        have = part.stat().st_size if part.is_file() else 0
        if expected.size is not None and have > expected.size:  # cannot be a prefix of the file
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        response = None
        try:
            response = session.get(url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, timeout))
            if _nothing_left(response, url):
                break
            _write_part(response, part, have, dest.name, expected, traffic)
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Retryable) as exc:
            last_error = _scrub(str(exc) if isinstance(exc, _Retryable) else network_reason(exc), url)
            if attempt + 1 < attempts:
                delay = _sleep_for(attempt, backoff, response)
                log_retry(log, f"download of {dest.name}", f"failed ({last_error})", attempt + 1, attempts - 1, delay)
                sleep(delay)
        finally:
            if response is not None:
                response.close()
    else:
        raise DownloadError(f"could not download {dest.name} from {safe_url(url)} after {attempts} tries "
                            f"({last_error}); {CHECK_NETWORK}: the part already downloaded is kept and resumed")
    try:
        check_complete(part, expected)
    except DownloadError:
        part.unlink(missing_ok=True)  # a wrong file must not be resumed
        raise
    os.replace(part, dest)
    return dest
