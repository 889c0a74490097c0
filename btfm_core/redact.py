"""Mask credentials in any text before it leaves the process (messages, console, log files).

:func:`redact` replaces with ``***``:

- the password of URL userinfo (``https://user:***@host/...``);
- the values of ``Authorization``, ``Proxy-Authorization``, ``Cookie`` and ``Set-Cookie``
  headers, as header lines or in dict/JSON form (the scheme is kept: ``Basic ***``);
- values of keys named like secrets (``client_secret``, ``password``, ``token``, ``api_key``,
  ``signature``, ``X-Amz-Security-Token``, ``EARTHDATA_PASSWORD``...) in query strings and form
  bodies (``k=v&``), JSON and reprs (``"k": "v"``) and ``k: v`` lines; ``code`` and ``sig``
  (OAuth authorization codes, SAS signatures) only in ``k=v`` form;
- every value registered with :func:`register_secret` (any configured secret), wherever it
  appears, e.g. echoed back in a server's error body.

:class:`RedactingFilter` applies it to log records, including their tracebacks.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from typing import TypeVar, cast
from urllib.parse import quote, quote_plus, unquote, urlsplit

#: A JSON-like value (str, number, dict, list) that redact_values keeps the type of.
JsonLike = TypeVar("JsonLike")

__all__ = ["MASK", "RedactingFilter", "forget_secrets", "redact", "redact_values", "register_login", "register_secret",
           "register_url_credentials"]

MASK = "***"
#: Registered values shorter than this are ignored: masking them would mask ordinary text.
MIN_SECRET_LENGTH = 4

# key names (case-insensitive) whose values are secret, alone or as the last part of a longer
# key (``sh_client_secret``, ``EARTHDATA_PASSWORD``, ``X-Amz-Signature``); a key never follows
# ``/``, so a URL path ending in ``/token`` is not one
_NAMES = ("client_secret", "secret", "password", "passwd", "pwd", "passphrase", "token", "access_token",
          "refresh_token", "id_token", "session_token", "security_token", "api_key", "apikey", "api-key",
          "private_key", "secret_key", "secret_access_key", "signature", "x-amz-credential",
          "accesstoken", "refreshtoken", "idtoken", "clientsecret", "sessiontoken", "secretaccesskey")
_KEY = rf"(?:[\w.-]*[_.-])?(?:{'|'.join(re.escape(name) for name in _NAMES)})"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
_BARE = r"[^\s&#'\",;<>()\[\]{}]+"

_SEPARATOR = r"['\"]?(?:[ \t]*:[ \t]*|=)"  # ``k=v``, ``k: v``, ``"k": v``, ``'k': v``

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:'\"<>]*):[^\s/?#@'\"<>]+@")
_HEADER = re.compile(rf"(?i)(?<![\w-])((?:proxy-)?authorization|(?:set-)?cookie)({_SEPARATOR})({_QUOTED}|[^\r\n]+)")
_AUTH_SCHEME = re.compile(r"(?i)^(basic|bearer|digest|token|negotiate|ntlm|aws4-hmac-sha256|hoba|mutual)\s+")
_SECRET_KEY = re.compile(rf"(?i)(?<![\w./-])({_KEY})({_SEPARATOR})({_QUOTED}|{_BARE})")
_URL_ONLY_KEY = re.compile(r"(?i)(?<![\w./-])(code|sig)=([^\s&#'\"<>]+)")

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Mask ``value`` (and its URL-encoded forms) in everything :func:`redact` sees from now on.

    Values shorter than :data:`MIN_SECRET_LENGTH` characters are ignored.
    """
    global _pattern
    forms = {value, quote(value, safe=""), quote_plus(value, safe="")}
    with _lock:
        new = {form for form in forms if len(form) >= MIN_SECRET_LENGTH} - _secrets
        if new:
            _secrets.update(new)
            _pattern = None


def register_login(username: str, password: str) -> None:
    """Mask a password and the ``Basic`` credentials (base64 of ``user:password``) made from it."""
    register_secret(password)
    if password:
        register_secret(base64.b64encode(f"{username}:{password}".encode()).decode())


def register_url_credentials(url: str) -> None:
    """Register the password of ``url``'s userinfo (``scheme://user:password@host``), if it has one."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:
        return
    if password:
        register_login(unquote(username or ""), unquote(password))
        register_secret(password)  # as written in the URL, percent-encoding included


def forget_secrets() -> None:
    """Drop every registered value (tests use it to start from a clean slate)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def _registered() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _secrets:
            ordered = sorted(_secrets, key=len, reverse=True)  # longest first: no partial leftovers
            _pattern = re.compile("|".join(re.escape(value) for value in ordered))
        return _pattern


def _mask_value(value: str) -> str:
    """``***`` in place of a value, keeping its quotes (placeholders such as ``...`` are kept)."""
    if value.strip("'\"").strip(".*") == "":
        return value
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return f"{value[0]}{MASK}{value[0]}"
    return MASK


def _mask_header(match: re.Match[str]) -> str:
    name, separator, value = match.groups()
    quote_char = value[0] if value[:1] in ("'", '"') else ""
    inner = value[1:-1] if quote_char else value
    scheme = _AUTH_SCHEME.match(inner)
    masked = f"{scheme.group(0) if scheme else ''}{MASK}"
    return f"{name}{separator}{quote_char}{masked}{quote_char}"


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``***`` (see the module docstring for what is masked)."""
    pattern = _registered()
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _USERINFO.sub(rf"\1:{MASK}@", text)
    text = _HEADER.sub(_mask_header, text)
    text = _SECRET_KEY.sub(lambda m: f"{m.group(1)}{m.group(2)}{_mask_value(m.group(3))}", text)
    return _URL_ONLY_KEY.sub(rf"\1={MASK}", text)


def redact_values(value: JsonLike) -> JsonLike:
    """``value`` with :func:`redact` applied to every string in it (dicts and lists walked), e.g. metadata to record."""
    if isinstance(value, str):
        return cast(JsonLike, redact(value))
    if isinstance(value, dict):
        return cast(JsonLike, {key: redact_values(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return cast(JsonLike, [redact_values(item) for item in value])
    return value


class RedactingFilter(logging.Filter):
    """A handler filter that redacts the formatted message, the traceback and the stack of a record.

    The message is formatted here (``record.msg`` becomes the redacted text, ``record.args``
    None) so secrets passed as arguments are masked too; the traceback text is computed once and
    stored redacted in ``record.exc_text``, which formatters then print instead of their own.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; never drops it."""
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, redacted
            message = f"{record.msg!s} {record.args!r}"
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
