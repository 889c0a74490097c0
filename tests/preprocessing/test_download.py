"""Whole-file downloads: resume after a dropped connection, retries, size and checksum checks."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import requests

from btfm_core.errors import CredentialsError, DownloadError
from btfm_core.loopback import LoopbackServer
from btfm_preprocessing.download import PART_SUFFIX, Expected, download

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

DEMO_COG = Path(__file__).resolve().parents[2] / "data" / "demo_belgium"


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    """A file to serve: the demo sample's COGs concatenated (~1 MB, many download chunks)."""
    data = b"".join(path.read_bytes() for path in sorted(DEMO_COG.rglob("*.tif")))[: 1 << 20]
    root = tmp_path / "served"
    root.mkdir()
    (root / "scene.tif").write_bytes(data)
    return root, data


def expected_of(data: bytes) -> Expected:
    return Expected(size=len(data), md5=hashlib.md5(data).hexdigest())


def no_sleep(seconds: float) -> None:
    pass


def test_download_resumes_after_a_dropped_connection(payload: tuple[Path, bytes], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    root, data = payload
    with LoopbackServer(root) as srv, requests.Session() as session, caplog.at_level(logging.INFO):
        srv.cut_next["scene.tif"] = len(data) // 3
        out = download(f"{srv.url}/scene.tif?sig=s1gnature-token", tmp_path / "out" / "scene.tif", session,
                       expected_of(data), sleep=no_sleep)
        ranges = [h.get("Range") for h in srv.request_headers]
    assert out.read_bytes() == data
    resumed_at = int(ranges[-1].removeprefix("bytes=").rstrip("-"))  # the second try asked only for the rest
    assert 0 < resumed_at <= len(data) // 3
    assert not (tmp_path / "out" / f"scene.tif{PART_SUFFIX}").exists()
    assert "retry 1/4 in" in caplog.text and "s1gnature-token" not in caplog.text  # signed URLs stay out of logs


def test_truncated_file_is_never_kept(payload: tuple[Path, bytes], tmp_path: Path) -> None:
    root, data = payload
    (root / "scene.tif").write_bytes(data[: len(data) // 2])  # the server only has half of it
    dest = tmp_path / "scene.tif"
    with LoopbackServer(root) as srv, requests.Session() as session, pytest.raises(DownloadError):
        download(f"{srv.url}/scene.tif", dest, session, expected_of(data), attempts=2, sleep=no_sleep)
    assert not dest.exists()


def test_checksum_mismatch_is_rejected_and_not_resumed(payload: tuple[Path, bytes], tmp_path: Path) -> None:
    root, data = payload
    dest = tmp_path / "scene.tif"
    with LoopbackServer(root) as srv, requests.Session() as session, pytest.raises(DownloadError, match="MD5"):
        download(f"{srv.url}/scene.tif", dest, session, Expected(size=len(data), md5="0" * 32), sleep=no_sleep)
    assert not dest.exists() and not dest.with_name(dest.name + PART_SUFFIX).exists()


def test_503_then_success(payload: tuple[Path, bytes], tmp_path: Path) -> None:
    root, data = payload
    calls = []

    def flaky(method: str, path: str, body: bytes | None) -> object | None:
        calls.append(path)
        return 503 if len(calls) == 1 else None  # then fall through to the file

    with LoopbackServer(root, api=flaky) as srv, requests.Session() as session:
        out = download(f"{srv.url}/scene.tif", tmp_path / "scene.tif", session, expected_of(data), sleep=no_sleep)
    assert out.read_bytes() == data and len(calls) == 2


def test_rejected_login_is_a_credentials_error(payload: tuple[Path, bytes], tmp_path: Path) -> None:
    root, _ = payload
    with LoopbackServer(root, api=lambda *_: 401) as srv, requests.Session() as session, \
            pytest.raises(CredentialsError, match="rejected"):
        download(f"{srv.url}/scene.tif", tmp_path / "scene.tif", session, sleep=no_sleep)


def test_complete_file_is_not_downloaded_again(payload: tuple[Path, bytes], tmp_path: Path) -> None:
    root, data = payload
    dest = tmp_path / "scene.tif"
    dest.write_bytes(data)
    with LoopbackServer(root) as srv, requests.Session() as session:
        download(f"{srv.url}/scene.tif", dest, session, expected_of(data))
        assert srv.bytes_served["scene.tif"] == 0


def test_missing_file_is_a_clear_error_without_retries_or_tokens(payload: tuple[Path, bytes], tmp_path: Path) -> None:
    root, _ = payload
    calls = []

    def gone(method: str, path: str, body: bytes | None) -> object | None:
        calls.append(path)
        return 404

    with LoopbackServer(root, api=gone) as srv, requests.Session() as session, \
            pytest.raises(DownloadError, match="HTTP 404") as info:
        download(f"{srv.url}/scene.tif?token=abc123secret", tmp_path / "scene.tif", session, sleep=no_sleep)
    assert len(calls) == 1 and "abc123secret" not in str(info.value)
