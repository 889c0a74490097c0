"""One run per folder: the advisory lock of btfm_core.locking (issue 14, item 1)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from btfm_core.locking import LOCK_NAME, FolderLockedError, folder_lock


def test_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    with folder_lock(tmp_path, "inference"):
        holder = json.loads((tmp_path / LOCK_NAME).read_text())
        with pytest.raises(FolderLockedError, match=rf"pid {holder['pid']} .*inference"), \
                folder_lock(tmp_path, "stitch"):
            pass
    assert not (tmp_path / LOCK_NAME).exists()  # released cleanly: nothing left behind
    with folder_lock(tmp_path, "stitch"):  # free again
        pass


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    code = ("import sys, time; from pathlib import Path; from btfm_core.locking import folder_lock\n"
            "with folder_lock(Path(sys.argv[1]), 'preprocessing'):\n"
            "    print('held', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderLockedError, match=rf"pid {proc.pid} .*preprocessing"), \
                folder_lock(tmp_path, "inference"):
            pass
    finally:
        proc.kill()
        proc.wait()
    # the kernel released the dead holder's lock: taken over, with a line naming it
    with folder_lock(tmp_path, "inference"):
        pass


def test_lock_of_a_killed_run_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": "h", "step": "stitch", "command": "x",
                                                  "started": 0}))
    with caplog.at_level(logging.INFO), folder_lock(tmp_path, "stitch"):
        pass
    assert f"taking over the lock of pid {pid}" in caplog.text and "no longer running" in caplog.text


def test_stitch_refuses_a_locked_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from btfm_infer import stitch_tiled_representation
    from tests.infer.test_families import make_run

    tiles_dir = make_run(tmp_path)
    (tmp_path / "representation_retiled").mkdir()
    with folder_lock(tmp_path, "export"):
        code = stitch_tiled_representation.main(["--representation-dir", str(tmp_path / "representation_retiled"),
                                                 "--roi", str(tmp_path / "roi.tiff"), "--tiles-dir", str(tiles_dir),
                                                 "--out-dir", str(tmp_path), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert "is in use by another run" in err and "Traceback" not in err


def _set_run_key(tile_dir: Path, key: str) -> None:
    meta_path = tile_dir / "tile.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta["run_key"] = key
    meta_path.write_text(json.dumps(meta))


def test_tiles_of_two_runs_are_never_consumed_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from btfm_core.errors import TileFormatError
    from btfm_core.tiles import check_single_run, list_tiles
    from btfm_infer import stitch_tiled_representation
    from tests.infer.test_families import make_run

    tiles_dir = make_run(tmp_path)
    tiles = list_tiles(tiles_dir)
    for tile in tiles:
        _set_run_key(tiles_dir / tile.name, "a" * 16)
    assert check_single_run(tiles_dir, tiles) == "a" * 16
    _set_run_key(tiles_dir / tiles[0].name, "b" * 16)
    with pytest.raises(TileFormatError, match=r"mixes tiles of 2 preprocessing runs.*" + tiles[0].name):
        check_single_run(tiles_dir, tiles)
    (tmp_path / "representation_retiled").mkdir()
    assert stitch_tiled_representation.main(["--representation-dir", str(tmp_path / "representation_retiled"),
                                             "--roi", str(tmp_path / "roi.tiff"), "--tiles-dir", str(tiles_dir),
                                             "--out-dir", str(tmp_path), "-q"]) == 2
    assert "mixes tiles of 2 preprocessing runs" in capsys.readouterr().err


def test_inference_refuses_a_locked_output_folder_and_mixed_tiles(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from btfm_infer import infer_all_tiles
    from tests.infer.test_families import GOLDEN, make_run

    tiles_dir = make_run(tmp_path)
    out = tmp_path / "representation_retiled"
    out.mkdir()
    command = ["--tiles-dir", str(tiles_dir), "--output-dir", str(out), "--checkpoint",
               str(GOLDEN / "v1_0" / "v1_0.pt"), "--precision", "fp32", "-q"]
    with folder_lock(out, "inference"):
        assert infer_all_tiles.main(command) == 2
    assert "is in use by another run" in capsys.readouterr().err
    assert not list(out.glob("*.npy")) and not (out / "inference.json").exists()
    assert infer_all_tiles.main(command) == 0 and not (out / LOCK_NAME).exists()
    _set_run_key(tiles_dir / "0_0_16_12", "c" * 16)
    assert infer_all_tiles.main([*command[:3], str(tmp_path / "other"), *command[4:]]) == 2
    assert "mixes tiles of 2 preprocessing runs" in capsys.readouterr().err
