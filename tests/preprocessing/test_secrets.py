"""Secrets never leave the process: servers that echo the request in their error answers.

The loopback servers (127.0.0.1 only) answer with the request they got -- headers, query and
form body -- in an error body, as some OAuth and API servers do. The real entry point runs with
``-v`` (DEBUG on the console, including the libraries' request logs) and ``--log-file``; neither
the console nor the log file may hold a secret, in any encoding, while the message still says
what failed.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus

import pytest

from btfm_core.loopback import LoopbackServer, Reply
from btfm_preprocessing import pipeline
from btfm_preprocessing.sources import sentinelhub as shub
from tests.conftest import DEMO_DIR
from tests.preprocessing.test_remote_stac import stac_api

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]
CLIENT_ID = "echo-client-id"
CLIENT_SECRET = "Echo+s3cr3t/never=shown"  # needs URL-encoding in a form body
TOKEN_PATH = "/auth/realms/main/protocol/openid-connect/token"
CATALOG_USER = "stac-user"
CATALOG_PASSWORD = "catalog-Pa55word"


class Echo:
    """API routes that answer ``status`` with the request (line, headers, body) as the error body.

    Attributes:
        server: the server whose recorded request headers are echoed.
        routes: path -> (status, body kind: ``oauth`` JSON error, or ``text``).
        passthrough: the API of every other route.
        echoed: the error bodies sent.
    """

    def __init__(self, server: LoopbackServer, routes: dict[str, tuple[int, str]],
                 passthrough: object | None = None) -> None:
        self.server, self.routes, self.passthrough = server, routes, passthrough
        self.echoed: list[str] = []

    def __call__(self, method: str, path: str, body: bytes | None) -> object | None:
        route = path.partition("?")[0]
        if route not in self.routes:
            return self.passthrough(method, path, body) if self.passthrough else None  # type: ignore[operator]
        status, kind = self.routes[route]
        sent = self.server.request_headers[-1]
        headers = "\n".join(f"{key}: {value}" for key, value in sent.items())
        form = (body or b"").decode()
        # what the server made of it, in plain text (no key names): only registered secrets catch these
        values = [value for values in parse_qs(form).values() for value in values]
        scheme, _, credentials = sent.get("Authorization", "").partition(" ")
        if scheme == "Basic":
            values.append(base64.b64decode(credentials).decode())
        echo = f"unknown client {' '.join(values)}\n{form}\n{method} {path}\n{headers}"  # body first: messages are cut
        self.echoed.append(echo)
        if kind == "oauth":
            answer = json.dumps({"error": "invalid_client", "error_description": f"bad request: {echo}"})
            return Reply(answer.encode(), status=status, content_type="application/json")
        return Reply(echo.encode(), status=status, content_type="text/plain")


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer(DEMO_DIR) as srv:
        yield srv


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / "roi.tiff")
    return tmp_path


def encodings(*values: str) -> list[str]:
    """Each value as written, URL-encoded (path and form style) and JSON-escaped."""
    forms = set()
    for value in values:
        forms |= {value, quote(value, safe=""), quote_plus(value), json.dumps(value)[1:-1]}
    return sorted(forms)


def run_verbose(run_dir: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run the preprocessing entry point with ``-v`` and a log file: (exit code, console, log file)."""
    log_file = run_dir / "logs" / "preprocess.log"
    code = pipeline.main([str(run_dir / "roi.tiff"), *DATES, "--tile-size", "50", "-v", "--log-file",
                          str(log_file), *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err, log_file.read_text()


@pytest.mark.parametrize(("status", "kind", "expected"), [
    (401, "oauth", "rejected the OAuth client credentials"),  # an OAuth error whose description echoes
    (500, "text", "token request failed"),  # a server error page that echoes
], ids=["401-oauth-echo", "500-text-echo"])
def test_sentinelhub_token_endpoint_echo_is_redacted(status: int, kind: str, expected: str,
                                                     server: LoopbackServer, run_dir: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(shub.CLIENT_ID_ENV, CLIENT_ID)
    monkeypatch.setenv(shub.CLIENT_SECRET_ENV, CLIENT_SECRET)
    monkeypatch.delenv(shub.BASE_URL_ENV, raising=False)
    monkeypatch.delenv(shub.TOKEN_URL_ENV, raising=False)
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setattr(shub, "DEFAULT_RETRY", shub.RetryPolicy(attempts=2, sleep_s=0.01, rate_limit_tries=2,
                                                                rate_limit_wait_s=0.01, timeout_s=20))
    echo = Echo(server, {TOKEN_PATH: (status, kind)})
    server.api = echo
    code, console, log_text = run_verbose(run_dir, capsys, "--source", "sentinelhub", "--s1-source", "none",
                                          "--catalog", server.url)
    assert code == 2 and echo.echoed
    assert any(form in echo.echoed[0] for form in encodings(CLIENT_SECRET))  # the server did echo it
    assert expected in console and expected in log_text
    assert "client_secret=***" in console and "unknown client" in console  # the echo reached the message, masked
    basic = base64.b64encode(f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}".encode()).decode()
    for text in (console, log_text):
        for form in [*encodings(CLIENT_SECRET), basic]:
            assert form not in text


def test_catalog_url_password_is_redacted(server: LoopbackServer, run_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    echo = Echo(server, {"/api": (401, "text")}, passthrough=stac_api(server.url))
    server.api = echo
    catalog = server.url.replace("http://", f"http://{CATALOG_USER}:{CATALOG_PASSWORD}@") + "/api"
    code, console, log_text = run_verbose(run_dir, capsys, "--source", "earthsearch", "--s1-source", "none",
                                          "--catalog", catalog)
    basic = base64.b64encode(f"{CATALOG_USER}:{CATALOG_PASSWORD}".encode()).decode()
    assert any(basic in echoed for echoed in echo.echoed)  # the server did echo the Authorization header
    for text in (console, log_text):
        for form in [*encodings(CATALOG_PASSWORD), basic]:
            assert form not in text
        assert f"GET http://{CATALOG_USER}:***@127.0.0.1:" in text  # pystac-client's DEBUG request line
        assert "Authorization': 'Basic ***'" in text
    assert f"unknown client {CATALOG_USER}:***" in console  # the decoded login, masked by the registered password
    assert code != 0 and "GET /api" in console  # what failed: the echoed answer of the landing page


def test_every_secret_and_login_is_registered_for_redaction() -> None:
    from btfm_core.redact import redact
    from btfm_preprocessing.credentials import Secret, UserPassword

    Secret("registered-on-creation")
    UserPassword("carol", Secret("carols-password"), "test")
    basic = base64.b64encode(b"carol:carols-password").decode()
    assert redact(f"echo: registered-on-creation carols-password {basic}") == "echo: *** *** ***"
