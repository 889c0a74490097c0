"""Repository hygiene: the Dockerfile lints clean, drivers parse, no machine paths or secrets in files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DRIVERS = ["btfm_preprocessing/main_pipeline.sh", "btfm_infer/infer_all_tiles.sh", "scripts/demo.sh"]


def tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    names = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    suffixes = {".py", ".sh", ".md", ".toml", ".txt", ".json", ".cfg", ".yml", ".yaml", ""}
    return [REPO / n for n in names if Path(n).suffix in suffixes and (REPO / n).is_file()]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        hadolint = Path(shutil.which("hadolint") or "")
    assert hadolint.is_file(), "hadolint not installed: pip install -r requirements.txt"
    result = subprocess.run([str(hadolint), str(REPO / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("driver", DRIVERS)
def test_bash_drivers_parse(driver: str) -> None:
    subprocess.run(["bash", "-n", str(REPO / driver)], check=True)


def test_no_machine_paths_or_secrets_in_tracked_files() -> None:
    machine_path = re.compile(r"(?<![\w.])/(?:work|home/\w+|Users/\w+|root)/")
    secret = re.compile(r"(?i)(client_secret|password|token)\s*[=:]\s*['\"][A-Za-z0-9_\-]{12,}['\"]")
    offenders = []
    for path in tracked_text_files():
        if path.stat().st_size > 2_000_000:
            continue
        text = path.read_text(errors="ignore")
        in_tests = path.relative_to(REPO).parts[0] == "tests"  # tests hold fake secrets on purpose
        if machine_path.search(text) or (secret.search(text) and not in_tests):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"machine-specific paths or secrets in: {offenders}"
