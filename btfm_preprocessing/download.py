"""Whole-file HTTP downloads that are never mistaken for complete when they are not.

Used by sources that cannot be read in windows (ASF GRD zips, HyP3 products). A download goes
to ``<name>.part`` and is renamed only after its size (and checksum, when the service gives
one) match; an interrupted download resumes from the ``.part`` file with a ``Range`` request.
Timeouts, dropped connections, 429 and 5xx answers are retried with exponential back-off.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from tqdm import tqdm

from btfm_core.errors import CredentialsError, DownloadError
from btfm_core.fileio import file_digest

log = logging.getLogger(__name__)

PART_SUFFIX = ".part"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 16
_received = {"bytes": 0}
_received_lock = threading.Lock()


def downloaded_bytes() -> int:
    """Bytes received by :func:`download` in this process so far (for the run summary)."""
    return _received["bytes"]


def count_received(n: int) -> None:
    """Add ``n`` bytes received over the network to :func:`downloaded_bytes` (for other clients too)."""
    with _received_lock:
        _received["bytes"] += n


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
    retry_after = response.headers.get("Retry-After") if response is not None else None
    if retry_after and retry_after.isdigit():
        return float(retry_after)
    return base * 2 ** attempt


def download(url: str, dest: Path, session: requests.Session, expected: Expected = Expected(), *,
             attempts: int = 5, backoff: float = 1.0, timeout: float = 60.0,
             sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` to ``dest`` unless a complete ``dest`` exists; return ``dest``.

    Args:
        url: file URL (redirects, e.g. to an authenticated bucket, are followed).
        dest: final path; the partial file is ``dest`` + ``.part``.
        session: an HTTP session carrying the service's authentication.
        expected: size and MD5 announced by the service; a file that does not match is not kept.
        attempts: tries before giving up (each resumes where the last one stopped).
        backoff: first retry delay in seconds, doubled each time (``Retry-After`` wins).
        timeout: seconds without data before a try counts as failed.
        sleep: how to wait between tries (tests pass a no-op).

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
            response = session.get(url, headers=headers, stream=True, timeout=timeout)
            if response.status_code in (401, 403):
                raise CredentialsError(f"{response.status_code} from {_without_query(url)}: the login was "
                                       "rejected or lacks access (check the credentials named in README)")
            if response.status_code in RETRY_STATUS:
                raise _Retryable(f"HTTP {response.status_code}")
            if response.status_code == 416:  # nothing left to fetch: the part file is complete or bad
                response.close()
                break
            if response.status_code >= 400:
                raise DownloadError(f"HTTP {response.status_code} for {_without_query(url)}: the file is not "
                                    "available there (check the product or search again)")
            if have and response.status_code != 206:  # server ignored Range: start over
                have = 0
            total = int(response.headers.get("Content-Length", 0)) + have or expected.size
            with part.open("ab" if have else "wb") as handle, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr,
                    leave=False, disable=None) as bar:
                for chunk in response.iter_content(CHUNK_BYTES):
                    handle.write(chunk)
                    bar.update(len(chunk))
                    count_received(len(chunk))
            if expected.size is not None and part.stat().st_size < expected.size:
                raise _Retryable(f"connection ended after {part.stat().st_size} of {expected.size} bytes")
            break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                _Retryable) as exc:
            last_error = _scrub(str(exc).split("\n")[0], url)
            if attempt + 1 < attempts:
                delay = _sleep_for(attempt, backoff, response)
                log.warning("download of %s failed (%s); retrying in %.0f s", dest.name, last_error, delay)
                sleep(delay)
        finally:
            if response is not None:
                response.close()
    else:
        raise DownloadError(f"could not download {dest.name} after {attempts} tries: {last_error}")
    try:
        check_complete(part, expected)
    except DownloadError:
        part.unlink(missing_ok=True)  # a wrong file must not be resumed
        raise
    os.replace(part, dest)
    return dest
