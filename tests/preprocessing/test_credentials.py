"""Credentials: read from env or ~/.netrc, errors name the variable, secrets never shown."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from btfm_core.errors import CredentialsError
from btfm_preprocessing.credentials import EARTHDATA_HOST, Secret, UserPassword
from btfm_preprocessing.sources import SourceEnvironment


def earthdata_login() -> UserPassword:
    """The Earthdata login as the sources get it: from the environment captured at the command-line edge."""
    return SourceEnvironment.capture(os.environ).earthdata_login()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "SH_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_secret_is_hidden_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret("hunter2")
    logging.getLogger("t").warning("token %s %r %s", secret, secret, f"{secret}")
    assert "hunter2" not in caplog.text and "hunter2" not in repr([secret])
    assert secret.reveal() == "hunter2"
    with pytest.raises(TypeError):  # not a str: it cannot slip into JSON or a concatenation
        json.dumps({"token": secret})
    with pytest.raises(TypeError):
        "Bearer " + secret  # type: ignore[operator]


def test_missing_env_names_the_variable() -> None:
    with pytest.raises(CredentialsError, match="SH_CLIENT_ID"):
        SourceEnvironment.capture(os.environ).required_secret("SH_CLIENT_ID", "--source sentinelhub")


def test_earthdata_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "pa55")
    login = earthdata_login()
    assert (login.username, login.password.reveal()) == ("alice", "pa55")
    assert "pa55" not in repr(login)


def test_earthdata_half_set_names_the_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARTHDATA_USERNAME", "alice")
    with pytest.raises(CredentialsError, match="EARTHDATA_PASSWORD is not set"):
        earthdata_login()


def test_earthdata_from_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "netrc"
    path.write_text(f"machine {EARTHDATA_HOST} login bob password s3cret\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    login = earthdata_login()
    assert login.username == "bob" and login.password.reveal() == "s3cret" and "s3cret" not in login.origin


def test_earthdata_missing_everywhere_says_how_to_set_it() -> None:
    with pytest.raises(CredentialsError, match=r"EARTHDATA_USERNAME.*~/.netrc"):
        earthdata_login()


def test_broken_netrc_is_reported_without_its_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "netrc"
    path.write_text("machine x login y password topsecret extra-garbage 'unterminated\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))
    with pytest.raises(CredentialsError) as info:
        earthdata_login()
    assert "topsecret" not in str(info.value)
