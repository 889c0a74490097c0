"""Redaction of credentials: every pattern, the registered values, the log filter, and no over-masking."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from btfm_core import redact as redaction
from btfm_core.logs import setup_logging
from btfm_core.redact import RedactingFilter, redact, register_login, register_secret, register_url_credentials


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    redaction.forget_secrets()
    yield
    redaction.forget_secrets()


@pytest.mark.parametrize(("text", "expected"), [
    ("https://user:pa55@host.example/stac/v1", "https://user:***@host.example/stac/v1"),
    ("--catalog http://me:p%40ss@127.0.0.1:8080/api failed", "--catalog http://me:***@127.0.0.1:8080/api failed"),
    ("s3+https://key:secret@bucket/x and ftp://a:b@c", "s3+https://key:***@bucket/x and ftp://a:***@c"),
    ("http://127.0.0.1:8080/api", "http://127.0.0.1:8080/api"),  # a port is no password
    ("http://host:8080/search?q=a@b", "http://host:8080/search?q=a@b"),
    ("https://token@host/x", "https://token@host/x"),  # a user without password is left
])
def test_url_userinfo_password(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
    ("authorization: Bearer eyJhbGciOi.eyJzdWIi.sig\nHost: x", "authorization: Bearer ***\nHost: x"),
    ("Proxy-Authorization: Digest username=x, response=y", "Proxy-Authorization: Digest ***"),
    ("Cookie: session=abc; csrftoken=def", "Cookie: ***"),
    ("Set-Cookie: id=a3fWa; Expires=Thu, 21 Oct 2031", "Set-Cookie: ***"),
    ("Headers: {'User-Agent': 'python-requests/2.32', 'Authorization': 'Basic dXNlcjpw'} Timeout: 60",
     "Headers: {'User-Agent': 'python-requests/2.32', 'Authorization': 'Basic ***'} Timeout: 60"),
    ('{"Authorization": "Bearer abc", "Cookie": "a=b", "Accept": "*/*"}',
     '{"Authorization": "Bearer ***", "Cookie": "***", "Accept": "*/*"}'),
    ("Authorization: xyz-opaque-key", "Authorization: ***"),
])
def test_auth_and_cookie_headers(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("grant_type=client_credentials&client_id=me&client_secret=s3cr3t&scope=x",
     "grant_type=client_credentials&client_id=me&client_secret=***&scope=x"),
    ("https://h/x?access_token=abc&refresh_token=def&n=1", "https://h/x?access_token=***&refresh_token=***&n=1"),
    ("?api_key=k1&apikey=k2&API-KEY=k3&Password=p&passwd=q&token=t&secret=s",
     "?api_key=***&apikey=***&API-KEY=***&Password=***&passwd=***&token=***&secret=***"),
    ("f.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=deadbeef"
     "&X-Amz-Security-Token=FQoG", "f.tif?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("f.tif?sv=2024-05-04&se=2031&sig=abc%2Bdef%3D&sp=r", "f.tif?sv=2024-05-04&se=2031&sig=***&sp=r"),
    ("cb?code=4/0AX4XfWh&state=xyz", "cb?code=***&state=xyz"),
    ('{"client_secret": "abc", "password": "p\\"w", "expires_in": 3600, "token_type": "Bearer"}',
     '{"client_secret": "***", "password": "***", "expires_in": 3600, "token_type": "Bearer"}'),
    ("{'access_token': 'eyJ0', 'refresh_token': 'eyJ1'}", "{'access_token': '***', 'refresh_token': '***'}"),
    ("SHConfig(sh_client_id='abc', sh_client_secret='xyz')", "SHConfig(sh_client_id='abc', sh_client_secret='***')"),
    ("X-Amz-Security-Token: FQoGZXIvYXdz\npassword: hunter22", "X-Amz-Security-Token: ***\npassword: ***"),
    ("EARTHDATA_PASSWORD=hunter22 SH_CLIENT_SECRET=abc accessToken: q", "EARTHDATA_PASSWORD=*** SH_CLIENT_SECRET=*** "
     "accessToken: ***"),
])
def test_keys_named_like_secrets(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "the model's token budget is 4096 tokens per batch",
    "tile 0_0_50_50 of S2B_MSIL2A_20220130T104301_N0400_R008_T31UFS_20220130T134422 written",
    "S2B_24MVV_20250731_0_L2A: 10 bands; signal=3 design=x barcode=12 encode=utf-8",
    "worker exited with code 2 (signal SIGKILL); status code: 500",
    '{"error": {"status": 401, "code": "COMMON_UNAUTHORIZED", "reason": "Unauthorized"}}',
    "cannot get a token from http://h/auth/realms/main/protocol/openid-connect/token: Failed to download",
    "set it (export SH_CLIENT_SECRET=...) and run again; expected 'machine h login USER password PASS'",
    "the Authorization header was refused; pass a password or a token",
    "GET http://127.0.0.1:8080/api?collections=sentinel-2-l2a&limit=100 took 0.2 s",
    "Secret('***') and password=*** stay as they are",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


def test_registered_values_are_masked_anywhere_in_any_encoding() -> None:
    register_secret("Echo+s3cr3t/value")
    assert redact("body: grant_type=x&client_id=id&x=Echo%2Bs3cr3t%2Fvalue") == "body: grant_type=x&client_id=id&x=***"
    assert redact("echoed Echo+s3cr3t/value back") == "echoed *** back"
    register_secret("my pass/word")
    assert redact("path my%20pass%2Fword, form my+pass%2Fword, raw my pass/word") == "path ***, form ***, raw ***"
    register_secret("abc")  # too short to mask without masking ordinary text
    assert redact("abc cabbage") == "abc cabbage"


def test_longest_registered_value_wins() -> None:
    register_secret("pa55word")
    register_secret("pa55word-and-more")
    assert redact("x pa55word-and-more y") == "x *** y"


def test_login_and_url_credentials_register_basic_auth() -> None:
    register_login("alice", "wonder-land")
    token = base64.b64encode(b"alice:wonder-land").decode()
    assert redact(f"saw {token} and wonder-land") == "saw *** and ***"
    register_url_credentials("https://bob:s%40fe-pass@stac.example/v1")
    basic = base64.b64encode(b"bob:s@fe-pass").decode()
    assert redact(f"user bob, s@fe-pass, s%40fe-pass, {basic}") == "user bob, ***, ***, ***"
    register_url_credentials("https://stac.example/v1")  # nothing to register; no error
    register_url_credentials("http://[::1")  # unparsable: ignored


def test_redaction_is_idempotent() -> None:
    text = "GET http://u:p4ss@h/x?token=abc Headers: {'Authorization': 'Basic dTpw'} Cookie: a=b"
    once = redact(text)
    assert redact(once) == once and "p4ss" not in once and "dTpw" not in once and "abc" not in once


def test_exact_console_error_shapes() -> None:
    """The messages entry_point prints: an OAuth error that echoes the request, a library error text."""
    register_secret("test-client-id")
    register_secret("s3cr3t-value")
    oauth = ("Sentinel Hub API at 127.0.0.1:8080 rejected the OAuth client credentials (SH_CLIENT_ID/"
             "SH_CLIENT_SECRET): invalid_client (bad request: grant_type=client_credentials&client_id="
             "test-client-id&client_secret=s3cr3t-value POST /token); check the client id and secret")
    assert redact(oauth) == oauth.replace("test-client-id", "***").replace("s3cr3t-value", "***")
    library = ("unexpected error (APIError: GET /api Host: 127.0.0.1 Authorization: Basic dXNlcjpwYXNz); this is a "
               "bug in BTFM")
    assert redact(library) == "unexpected error (APIError: GET /api Host: 127.0.0.1 Authorization: Basic ***"
    no_scene = "no Sentinel-2 scene found on 'earthsearch' (https://u:p4ss@h/v1) with cloud cover <= 90%"
    assert redact(no_scene) == "no Sentinel-2 scene found on 'earthsearch' (https://u:***@h/v1) with cloud cover <= 90%"


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("urllib3.connectionpool", logging.DEBUG, __file__, 1, msg, args, exc_info)


def test_filter_redacts_args_traceback_and_stack() -> None:
    register_secret("hunter22-secret")
    try:
        raise RuntimeError("server said: client_secret=hunter22-secret")
    except RuntimeError as caught:
        record = _record("token request %s -> %r", "body client_secret=abc", {"password": "x1"}, exc=caught)
    record.stack_info = "Stack (most recent call last):\n  hunter22-secret"
    assert RedactingFilter().filter(record) is True
    assert record.args is None
    assert record.msg == "token request body client_secret=*** -> {'password': '***'}"
    formatted = logging.Formatter("%(message)s").format(record)
    assert "hunter22-secret" not in formatted and "abc" not in formatted
    assert "RuntimeError: server said: client_secret=***" in formatted and "Stack (most recent call last)" in formatted


def test_filter_keeps_a_record_with_a_bad_format_string() -> None:
    register_secret("pw-value")
    record = _record("%d items for password=%s", "not-a-number", "pw-value")
    assert RedactingFilter().filter(record) is True  # logging would report the bad record; never raise here
    assert "pw-value" not in str(record.msg) and "%d items" in str(record.msg) and record.args is None


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.mark.usefixtures("restore_root_logger")
def test_setup_logging_redacts_console_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_secret("configured-secret-9")
    log_file = tmp_path / "logs" / "run.log"
    setup_logging(log_file, verbosity=1)
    logging.getLogger("pystac_client.stac_api_io").debug(
        "GET %s Headers: %s", "http://u:url-pass@h/api", {"Authorization": "Basic dTp1cmwtcGFzcw=="})
    logging.getLogger("sentinelhub").error("echoed: configured-secret-9")
    console = capsys.readouterr().err
    for text in (console, log_file.read_text()):
        assert "url-pass" not in text and "dTp1cmwtcGFzcw" not in text and "configured-secret-9" not in text
        assert "GET http://u:***@h/api Headers: {'Authorization': 'Basic ***'}" in text and "echoed: ***" in text
