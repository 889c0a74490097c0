"""Worker failures reach the user in one line, and no worker outlives its driver.

Subprocess workers are forced with ``--max-cpu 2`` on the three golden tiles; a worker's own
error comes back through its failure file, a killed worker is named with its signal, and the
driver's SIGTERM or SIGKILL takes its workers with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from btfm_core.errors import BTFMError
from btfm_core.tiles import list_tiles
from btfm_infer import infer_all_tiles
from btfm_infer.infer_all_tiles import build_parser, describe_worker_exit, plan_workers, run_workers, settings_from_args
from btfm_infer.progress import ProgressFile, failure_file_path, progress_file_path, write_progress_file
from btfm_infer.worker import DriverGone, _DriverWatch
from tests.infer.test_families import GOLDEN, make_run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG")

CHECKPOINT = GOLDEN / "v1_0" / "v1_0.pt"
TIMEOUT_S = 30.0
T = TypeVar("T")


def worker_pids(root: Path) -> list[int]:
    """Live (not zombie) ``btfm_infer.worker`` processes whose command line names ``root``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"btfm_infer.worker" in cmdline and any(str(root).encode() in part for part in cmdline) and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_for(condition: Callable[[], T], timeout_s: float = TIMEOUT_S) -> T:
    """Poll ``condition`` every 20 ms until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s")


def start_driver(tmp_path: Path) -> subprocess.Popen[bytes]:
    """``infer_all_tiles`` with two CPU workers on the golden tiles, in its own interpreter.

    Its stderr goes to ``tmp_path/stderr.txt`` (the workers inherit it: a pipe would stay open
    as long as they live).
    """
    tiles_dir = make_run(tmp_path)
    command = [sys.executable, "-m", "btfm_infer.infer_all_tiles", "--tiles-dir", str(tiles_dir),
               "--checkpoint", str(CHECKPOINT), "--max-cpu", "2", "--cores", "2", "--precision", "fp32", "-q"]
    with open(tmp_path / "stderr.txt", "wb") as err:
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def driver_stderr(tmp_path: Path) -> str:
    return (tmp_path / "stderr.txt").read_text()


def two_workers(tmp_path: Path, driver: subprocess.Popen[bytes]) -> list[int]:
    def seen() -> list[int]:
        assert driver.poll() is None, driver_stderr(tmp_path)
        pids = worker_pids(tmp_path)
        return pids if len(pids) == 2 else []
    return wait_for(seen)


def test_worker_error_is_one_line_with_tile_and_log(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tiles_dir = make_run(tmp_path)
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    settings = settings_from_args(build_parser().parse_args(["--tiles-dir", str(tiles_dir), "--output-dir", str(out),
                                                             "--log-dir", str(logs), "--checkpoint", str(CHECKPOINT)]))
    # fails in the workers (the driver's own check refuses it)
    settings = replace(settings, options=replace(settings.options, seed=-1))
    plans = [replace(p, precision="fp32") for p in plan_workers(list_tiles(tiles_dir), (1, 0), 2, 0, 2, 64, 64)]
    with pytest.raises(BTFMError) as info:
        run_workers(plans, settings)
    message = str(info.value)
    assert message.startswith("worker cpu_") and "\n" not in message
    worker = message.split()[1]
    first = next(p for p in plans if p.name == worker).tiles[0].name
    assert f"failed on tile {first}: seed and seed_key must be non-negative integers" in message
    assert message.endswith(f"(log: {logs / f'infer_{worker}.log'})")
    assert "Traceback" in (logs / f"infer_{worker}.log").read_text()  # the details stay in the log
    err = capfd.readouterr().err
    assert "Traceback" not in err and "seed and seed_key" not in err  # workers leave the console to the driver
    assert not list(logs.glob("failure_*")) and not list(logs.glob("progress_*"))


def test_tile_corrupted_after_validation_is_reported_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    tiles_dir = make_run(tmp_path)
    real_run_workers = infer_all_tiles.run_workers

    def corrupt_then_run(*args: object, **kwargs: object) -> None:
        (tiles_dir / "16_0_20_4" / "bands.npy").write_bytes(b"not an array")  # after the driver's checks
        real_run_workers(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(infer_all_tiles, "run_workers", corrupt_then_run)
    code = infer_all_tiles.main(["--tiles-dir", str(tiles_dir), "--checkpoint", str(CHECKPOINT),
                                 "--max-cpu", "2", "--cores", "2", "--precision", "fp32", "-q"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "failed on tile 16_0_20_4: " in errors[0] and "bands.npy" in errors[0], err
    assert "(log: " in errors[0]


def test_describe_killed_worker_names_signal_and_tile(tmp_path: Path) -> None:
    write_progress_file(progress_file_path(tmp_path, "cpu_1"), 10, 1, "0_12_10_18")
    line = describe_worker_exit("cpu_1", -signal.SIGKILL, tmp_path)
    assert line.startswith("worker cpu_1 was killed by SIGKILL while embedding tile 0_12_10_18 (out of memory?")
    assert "finished tiles are kept" in line and str(tmp_path / "infer_cpu_1.log") in line
    assert "SIGSEGV" in describe_worker_exit("gpu_0", -signal.SIGSEGV, tmp_path)
    assert describe_worker_exit("cpu_0", 1, tmp_path).startswith("worker cpu_0 exited with status 1; see ")
    progress = ProgressFile(progress_file_path(tmp_path, "cpu_2"))
    progress.start_tile("0_0_16_12")
    assert "while embedding tile 0_0_16_12" in describe_worker_exit("cpu_2", -9, tmp_path)
    progress.tile_finished(5)
    assert "while embedding" not in describe_worker_exit("cpu_2", -9, tmp_path)
    failure_file_path(tmp_path, "cpu_3").write_text("{not json")
    assert "exited with status 2" in describe_worker_exit("cpu_3", 2, tmp_path)  # a foreign file is ignored


def test_worker_killed_by_signal_is_reported(tmp_path: Path) -> None:
    driver = start_driver(tmp_path)
    try:
        os.kill(two_workers(tmp_path, driver)[0], signal.SIGKILL)
        driver.wait(timeout=TIMEOUT_S)
    finally:
        driver.kill()
    err = driver_stderr(tmp_path)
    assert driver.returncode == 2, err
    assert "was killed by SIGKILL" in err and "out of memory? see dmesg" in err and "Traceback" not in err


def test_sigterm_of_the_driver_stops_its_workers(tmp_path: Path) -> None:
    driver = start_driver(tmp_path)
    try:
        two_workers(tmp_path, driver)
        driver.send_signal(signal.SIGTERM)
        driver.wait(timeout=TIMEOUT_S)
    finally:
        driver.kill()
    err = driver_stderr(tmp_path)
    assert driver.returncode == 128 + signal.SIGTERM, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "ERROR: terminated by SIGTERM: stopped 2 worker(s); finished tiles are kept, rerun to embed the rest"]
    assert not worker_pids(tmp_path)


def test_sigkill_of_the_driver_ends_its_workers(tmp_path: Path) -> None:
    driver = start_driver(tmp_path)
    try:
        two_workers(tmp_path, driver)  # still starting: their parent-pid check ends them (PDEATHSIG: below)
    finally:
        driver.kill()
        driver.wait()
    wait_for(lambda: not worker_pids(tmp_path), timeout_s=15.0)
    worker_log = (tmp_path / "logs" / "infer_cpu_0.log").read_text()
    assert "stopped (driver (pid" in worker_log or "stopped (SIGTERM)" in worker_log


def test_pdeathsig_ends_a_child_whose_parent_is_killed(tmp_path: Path) -> None:
    child = ("import time; from btfm_infer.worker import die_with_parent; die_with_parent(); "
             "import os; print(os.getpid(), flush=True); time.sleep(60)")
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}, {str(tmp_path)!r}])"
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    proc.kill()
    proc.wait()
    proc.stdout.close()

    def gone() -> bool:
        try:
            return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) == "Z"
        except OSError:
            return True
    wait_for(gone, timeout_s=10.0)


def test_driver_watch_stops_an_orphan() -> None:
    _DriverWatch(None, os.getppid()).write()  # our parent: no stop
    with pytest.raises(DriverGone):
        _DriverWatch(None, os.getppid() + 100000).write()


def test_a_failed_first_run_leaves_no_record_that_blocks_the_next(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 14 item 3: inference.json stays only with the tiles it describes."""
    from btfm_infer import infer_all_tiles
    from tests.infer.test_families import GOLDEN, make_run

    tiles_dir = make_run(tmp_path)
    out = tmp_path / "representation_retiled"
    command = ["--tiles-dir", str(tiles_dir), "--output-dir", str(out), "--checkpoint",
               str(GOLDEN / "v1_0" / "v1_0.pt"), "--precision", "fp32", "--max-cpu", "1", "-q"]
    assert infer_all_tiles.main([*command, "--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err
    assert not (out / "inference.json").exists() and not list(out.glob("*.npy"))
    assert infer_all_tiles.main([*command, "--seed", "3"]) == 0
    assert '"seed": 3' in (out / "inference.json").read_text()
