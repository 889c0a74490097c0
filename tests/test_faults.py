"""Faults, step by step: SIGKILL anywhere, two runs at once, a full disk (issue 14, item 8).

Every step (preprocessing, inference with its driver or one worker killed, stitch, export) is run
as a user runs it, in its own process, on a crop of the embedded Belgian sample:

- killed with SIGKILL at 5 seeded points spread over its work (from the moment it holds its
  folder lock to its end, as timed by an uninterrupted run), then rerun with the same command:
  the folder must end byte-identical to the uninterrupted run's, with no temporary left;
- started while another run of it holds the folder (that one paused with SIGSTOP, so the two
  overlap for sure): the second stops at once with exit 2, naming the first one's pid;
- given a file-size limit (``RLIMIT_FSIZE``) below its first output file, so the write fails
  midway (as on a full disk): exit 2, one line naming the output, nothing half-written; and, where
  this machine can mount a small tmpfs, an output folder too small for the output: refused before
  any work with the bytes needed and free.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from btfm_core.locking import LOCK_NAME
from tests.conftest import DEMO_DIR
from tests.test_end_to_end import crop_roi

DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]
#: Seeded kill points per step.
KILL_POINTS = 5
#: A run that takes longer than this is stuck.
TIMEOUT_S = 240.0
#: File-size limit for the mid-write faults: above every log file, below every step's first output.
FILE_SIZE_LIMIT = 100_000


@dataclass(frozen=True)
class Step:
    """One pipeline step as a user runs it, in folder ``W`` (its inputs copied in first).

    Attributes:
        name: for test ids.
        inputs: files and folders of the reference run the step reads (relative to ``W``).
        argv: the command line, given ``W``.
        lock_dir: the folder the step locks (relative to ``W``).
        output_dir: the flag and folder that point the step's outputs elsewhere (disk-full tests).
    """

    name: str
    inputs: tuple[str, ...]
    argv: Callable[[Path], list[str]]
    lock_dir: str
    output_flag: Callable[[Path], list[str]]


def _module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]


STEPS = {
    "preprocessing": Step(
        "preprocessing", ("roi.tiff",),
        lambda w: _module("btfm_preprocessing.pipeline", str(w / "roi.tiff"), *DATES, "--source", "local",
                          "--catalog", str(DEMO_DIR / "catalog.json"), "--tile-size", "32", "-q"),
        ".", lambda out: ["--data-dir", str(out)]),
    "inference": Step(
        "inference", ("roi.tiff", "retiled_d_pixel"),
        lambda w: _module("btfm_infer.infer_all_tiles", "--tiles-dir", str(w / "retiled_d_pixel"), "--seed", "0",
                          "--max-cpu", "1", "--cores", "1", "--precision", "fp32", "-q"),
        "representation_retiled", lambda out: ["--output-dir", str(out)]),
    "inference-2-workers": Step(
        "inference-2-workers", ("roi.tiff", "retiled_d_pixel"),
        lambda w: _module("btfm_infer.infer_all_tiles", "--tiles-dir", str(w / "retiled_d_pixel"), "--seed", "0",
                          "--max-cpu", "2", "--cores", "2", "--precision", "fp32", "-q"),
        "representation_retiled", lambda out: ["--output-dir", str(out)]),
    "stitch": Step(
        "stitch", ("roi.tiff", "retiled_d_pixel", "representation_retiled"),
        lambda w: _module("btfm_infer.stitch_tiled_representation", "--representation-dir",
                          str(w / "representation_retiled"), "--roi", str(w / "roi.tiff"), "--tiles-dir",
                          str(w / "retiled_d_pixel"), "--out-dir", str(w), "-q"),
        ".", lambda out: ["--out-dir", str(out)]),
    "export": Step(
        "export", ("roi.tiff", "retiled_d_pixel", "representation_retiled", "stitched_representation.npy",
                   "stitched_representation.json"),
        lambda w: _module("btfm_infer.convert_npy2tiff", "--npy", str(w / "stitched_representation.npy"),
                          "--ref-tiff", str(w / "roi.tiff"), "--dtype", "int8", "-q"),
        ".", lambda out: ["--out", str(out / "emb.tif")]),
}


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, logs excepted (temporaries and locks included: none may be left)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "logs" not in p.relative_to(folder).parts}


def leftovers(folder: Path) -> list[str]:
    """Temporaries and locks under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith(".tmp-") or p.name == LOCK_NAME)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run of every step (each one's inputs for the next), in the fixed folder ``<tmp>/ref``."""
    ref = tmp_path_factory.mktemp("faults") / "ref"
    ref.mkdir()
    crop_roi(ref / "roi.tiff", col=20, row=30, width=40, height=36)
    for name in ("preprocessing", "inference", "stitch", "export"):
        run_to_end(STEPS[name].argv(ref), ref)
    return ref


def prepare(step: Step, reference: Path, work: Path) -> Path:
    """A fresh ``work`` folder holding the step's inputs, copied from ``reference`` with their times."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in step.inputs:
        source = reference / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("logs"))
        else:
            shutil.copy2(source, work / name)
    return work


def run_to_end(argv: list[str], cwd: Path, **options: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S, **options)  # type: ignore[call-overload]
    assert result.returncode == 0, result.stderr
    return result


def wait_for(condition: Callable[[], object], proc: subprocess.Popen[bytes], timeout_s: float = TIMEOUT_S) -> bool:
    """Poll ``condition`` every 2 ms until it holds (True) or ``proc`` ends (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return bool(condition())
        time.sleep(0.002)
    raise AssertionError(f"timed out after {timeout_s} s")


def worker_pids(driver: subprocess.Popen[bytes]) -> list[int]:
    """The driver's worker processes (its child processes)."""
    try:
        return [int(pid) for pid in Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()]
    except OSError:
        return []


@dataclass
class Started:
    """A step's process, started and holding its folder lock."""

    proc: subprocess.Popen[bytes]
    locked_at: float


def _holds(lock: Path) -> bool:
    try:
        return lock.stat().st_size > 0
    except FileNotFoundError:
        return False


def start_locked(step: Step, work: Path, *, workers: int = 0) -> Started | None:
    """Start the step; return once it holds its lock (and runs ``workers`` workers), or None if it ended first."""
    lock = work / step.lock_dir / LOCK_NAME
    proc = subprocess.Popen(step.argv(work), cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    # the lock taken and its holder written (a lock file exists for a moment before it names its holder)
    if not wait_for(lambda: _holds(lock) and len(worker_pids(proc)) >= workers, proc):
        proc.wait()
        return None
    return Started(proc, time.monotonic())


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def work_seconds(step: Step, reference: Path, work: Path, workers: int) -> float:
    """Seconds an uninterrupted run spends between taking its lock (and starting its workers) and ending."""
    started = start_locked(step, prepare(step, reference, work), workers=workers)
    assert started is not None, f"{step.name} ended before it took its lock"
    assert started.proc.wait(timeout=TIMEOUT_S) == 0
    return time.monotonic() - started.locked_at


def kill_and_rerun(step: Step, reference: Path, work: Path, *, kill_worker: bool) -> list[float]:
    """SIGKILL the step (its driver, or one worker) at seeded points; each time rerun it and compare.

    Returns:
        The delays (s after the lock was taken) at which a kill landed.
    """
    workers = 2 if kill_worker else 0
    expected = folder_digest(prepare(step, reference, work))
    run_to_end(step.argv(work), work)
    expected = folder_digest(work)
    seconds = work_seconds(step, reference, work, workers)
    rng = random.Random(f"{step.name}-{kill_worker}")
    landed: list[float] = []
    for point in sorted(rng.uniform(0.02, 0.8) for _ in range(KILL_POINTS)):
        delay = point * seconds
        for _ in range(4):  # the run ended before the kill (a faster moment of the machine): kill earlier
            started = start_locked(step, prepare(step, reference, work), workers=workers)
            if started is None:
                continue
            time.sleep(delay)
            victims = worker_pids(started.proc)[:1] if kill_worker else [started.proc.pid]
            alive = started.proc.poll() is None and bool(victims)
            if alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victims[0], signal.SIGKILL)
            code = started.proc.wait(timeout=TIMEOUT_S)
            stop(started.proc)
            if alive and code != 0:
                landed.append(delay)
                break
            delay /= 2
        else:
            raise AssertionError(f"{step.name}: no kill landed near {point:.2f} of {seconds:.1f} s")
        run_to_end(step.argv(work), work)
        assert not leftovers(work), f"killed {delay:.2f} s in: {leftovers(work)}"
        assert folder_digest(work) == expected, f"{step.name} killed {delay:.2f} s in, then rerun: outputs differ"
    return landed


@pytest.mark.parametrize("name", ["preprocessing", "inference", "stitch", "export"])
def test_a_run_killed_anywhere_reruns_to_identical_outputs(name: str, reference: Path, tmp_path: Path) -> None:
    landed = kill_and_rerun(STEPS[name], reference, tmp_path / "run", kill_worker=False)
    assert len(landed) == KILL_POINTS


def test_inference_with_a_worker_killed_anywhere_reruns_to_identical_outputs(reference: Path,
                                                                            tmp_path: Path) -> None:
    landed = kill_and_rerun(STEPS["inference-2-workers"], reference, tmp_path / "run", kill_worker=True)
    assert len(landed) == KILL_POINTS


@pytest.mark.parametrize("name", ["preprocessing", "inference", "stitch", "export"])
def test_a_second_run_on_a_busy_folder_is_refused(name: str, reference: Path, tmp_path: Path) -> None:
    step = STEPS[name]
    work = prepare(step, reference, tmp_path / "run")
    first = start_locked(step, work)
    assert first is not None
    try:
        os.killpg(first.proc.pid, signal.SIGSTOP)  # the first run is surely still holding the folder
        second = subprocess.run(step.argv(work), cwd=work, capture_output=True, text=True, timeout=TIMEOUT_S)
        os.killpg(first.proc.pid, signal.SIGCONT)
        assert first.proc.wait(timeout=TIMEOUT_S) == 0
    finally:
        stop(first.proc)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and "is in use by another run" in lines[0] and f"pid {first.proc.pid}" in lines[0], lines
    assert not leftovers(work)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing


def assert_one_line_and_nothing_written(result: subprocess.CompletedProcess[str], out: Path, *phrases: str) -> None:
    assert result.returncode == 2, result.stderr
    # libtiff prints its own reason ("_tiffWriteProc: File too large.") before GDAL fails the write
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("_tiffWriteProc")]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "logs" not in p.parts)
    assert written == [] or all(w.endswith(".json") and "cache" in w for w in written), written
    assert not leftovers(out)


@pytest.mark.parametrize("name", ["preprocessing", "inference", "stitch", "export"])
def test_a_disk_that_fills_up_midway_gives_one_line_and_no_partial_file(name: str, reference: Path,
                                                                        tmp_path: Path) -> None:
    step = STEPS[name]
    work = prepare(step, reference, tmp_path / "run")
    out = tmp_path / "out"
    result = subprocess.run([*step.argv(work), *step.output_flag(out)], cwd=work, capture_output=True, text=True,
                            timeout=TIMEOUT_S, preexec_fn=_limit_file_size)
    assert_one_line_and_nothing_written(result, out, "file-size limit", "was reached while writing", str(out))


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder``; skips the test where this machine cannot mount one."""
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root; the file-size-limit test covers the full disk here")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the file-size-limit test covers it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("name", ["preprocessing", "inference", "stitch", "export"])
def test_a_folder_too_small_is_refused_before_any_work(name: str, reference: Path, tmp_path: Path) -> None:
    step = STEPS[name]
    work = prepare(step, reference, tmp_path / "run")
    with small_tmpfs(tmp_path / "small", "96k") as out:
        result = subprocess.run([*step.argv(work), *step.output_flag(out)], cwd=work, capture_output=True,
                                text=True, timeout=TIMEOUT_S)
        assert_one_line_and_nothing_written(result, out, "not enough free space in", "needs", "is free")
