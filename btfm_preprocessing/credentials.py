"""Credentials for the services that need an account: from the environment or ``~/.netrc``.

The environment is read once, at the command-line edge
(:class:`btfm_preprocessing.sources.SourceEnvironment`); the functions here take the values it
captured. Secrets never appear in logs, messages, metadata or reprs: they travel as :class:`Secret`, and
errors name the variable or ``~/.netrc`` entry to set, never a value. Every secret is also
registered with :func:`btfm_core.redact.register_secret`, so it is masked wherever it turns up
later, e.g. echoed back in a server's error answer that ends up in a message or a log.
"""

from __future__ import annotations

import netrc
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

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # unpickled through __init__, so a Dask worker that receives one registers it for redaction too
        return (Secret, (self._value,))

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


def required_secret(value: Secret | None, name: str, purpose: str) -> Secret:
    """``value``, the environment variable ``name`` as captured at the command-line edge, which must be set.

    Raises:
        CredentialsError: if it is unset or empty; the message names the variable and ``purpose``.
    """
    if not value:
        raise CredentialsError(f"{purpose} needs the environment variable {name}; set it (export {name}=...) "
                               "and run again")
    return value


def netrc_login(host: str, netrc_path: Path | None = None) -> UserPassword | None:
    """The ``machine host`` entry of ``netrc_path`` (default ``~/.netrc``), or None if there is none.

    Raises:
        CredentialsError: if the file exists but cannot be parsed.
    """
    path = netrc_path or Path.home() / ".netrc"
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


def earthdata_login(username: str | None, password: Secret | None, netrc_path: Path | None = None) -> UserPassword:
    """NASA Earthdata login: ``EARTHDATA_USERNAME``/``EARTHDATA_PASSWORD``, else the netrc file.

    Args:
        username, password: ``$EARTHDATA_USERNAME`` and ``$EARTHDATA_PASSWORD`` (None: unset).
        netrc_path: ``$NETRC`` (None: ``~/.netrc``).

    Raises:
        CredentialsError: naming both ways to provide it when neither is set.
    """
    user = (username or "").strip()
    if user and password:
        return UserPassword(user, password, "EARTHDATA_USERNAME/EARTHDATA_PASSWORD")
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
