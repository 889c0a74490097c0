"""Credentials for the services that need an account, read from the environment or ``~/.netrc``.

Secrets never appear in logs, messages, metadata or reprs: they travel as :class:`Secret`, and
errors name the variable or ``~/.netrc`` entry to set, never a value. Every secret is also
registered with :func:`btfm_core.redact.register_secret`, so it is masked wherever it turns up
later, e.g. echoed back in a server's error answer that ends up in a message or a log.
"""

from __future__ import annotations

import netrc
import os
from dataclasses import dataclass
from pathlib import Path

from btfm_core.errors import CredentialsError
from btfm_core.redact import register_login, register_secret

#: NASA Earthdata login host (ASF downloads and HyP3).
EARTHDATA_HOST = "urs.earthdata.nasa.gov"


class Secret:
    """A secret value that never shows itself: ``str``, ``repr`` and formatting give ``***``.

    Not a ``str`` on purpose: concatenating it, or serialising it to JSON, fails loudly instead
    of copying the value somewhere; :meth:`reveal` hands it to a client library. Creating one
    registers the value for redaction (:func:`btfm_core.redact.register_secret`).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)

    def reveal(self) -> str:
        """The secret value, for passing to a client library."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class UserPassword:
    """A login; ``origin`` says where it was found (for messages, never the values).

    Its ``Basic`` credentials (base64 of ``user:password``) are registered for redaction too.
    """

    username: str
    password: Secret
    origin: str

    def __post_init__(self) -> None:
        register_login(self.username, self.password.reveal())


def env_secret(name: str, purpose: str) -> Secret:
    """The environment variable ``name`` as a :class:`Secret`.

    Raises:
        CredentialsError: if it is unset or empty; the message names the variable and ``purpose``.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        raise CredentialsError(f"{purpose} needs the environment variable {name}; set it (export {name}=...) "
                               "and run again")
    return Secret(value)


def netrc_login(host: str, netrc_path: Path | None = None) -> UserPassword | None:
    """The ``machine host`` entry of ``~/.netrc`` (or ``$NETRC``), or None if there is none.

    Raises:
        CredentialsError: if the file exists but cannot be parsed.
    """
    path = netrc_path or Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not path.is_file():
        return None
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except (netrc.NetrcParseError, OSError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc.__class__.__name__} (fix the file's syntax; "
                               f"expected 'machine {host} login USER password PASS')") from None
    if not entry or not entry[0] or not entry[2]:
        return None
    return UserPassword(entry[0], Secret(entry[2]), f"{path} (machine {host})")


def earthdata_login(netrc_path: Path | None = None) -> UserPassword:
    """NASA Earthdata login: ``EARTHDATA_USERNAME``/``EARTHDATA_PASSWORD``, else ``~/.netrc``.

    Raises:
        CredentialsError: naming both ways to provide it when neither is set.
    """
    user = os.environ.get("EARTHDATA_USERNAME", "").strip()
    password = os.environ.get("EARTHDATA_PASSWORD", "").strip()
    if user and password:
        return UserPassword(user, Secret(password), "EARTHDATA_USERNAME/EARTHDATA_PASSWORD")
    if user or password:
        missing = "EARTHDATA_PASSWORD" if user else "EARTHDATA_USERNAME"
        raise CredentialsError(f"NASA Earthdata login is incomplete: {missing} is not set (set both "
                               "EARTHDATA_USERNAME and EARTHDATA_PASSWORD, or use ~/.netrc)")
    login = netrc_login(EARTHDATA_HOST, netrc_path)
    if login is None:
        raise CredentialsError(
            "ASF needs a NASA Earthdata login (free: https://urs.earthdata.nasa.gov/users/new): set "
            "EARTHDATA_USERNAME and EARTHDATA_PASSWORD, or add "
            f"'machine {EARTHDATA_HOST} login USER password PASS' to ~/.netrc (chmod 600)")
    return login
