"""Preprocessing with tiles as Dask tasks, and the --dry-run plan (issue 12, items 1 and 2)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from btfm_core.errors import BTFMError, TileFormatError
from btfm_core.tiles import tile_layout
from btfm_preprocessing import pipeline
from btfm_preprocessing.sources import S1_SOURCES, S2_SOURCES, AcquisitionDay
from btfm_preprocessing.stack import group_by_day, split_by_orbit
from btfm_preprocessing.tile_tasks import (
    TileJob,
    check_workers_see,
    connect,
    day_part_count,
    default_read_group,
    join_tile_parts,
    run_on_dask,
    split_days,
    tile_groups,
    write_tile_group,
)
from tests.conftest import DEMO_DIR
from tests.test_end_to_end import crop_roi

DATES = ["2020-11-01", "2021-10-31", "2020-11-01", "2021-10-31", "1"]
# a local Dask cluster talks over loopback TCP (anything else stays blocked)
pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]

CATALOG = ["--source", "local", "--catalog", str(DEMO_DIR / "catalog.json"), "--tile-size", "32"]


def tiles_digest(run: Path) -> dict[str, str]:
    """sha256 of every file of the tiles folder (the run metadata names the ROI's path: same folder, same bytes)."""
    tiles = run / "retiled_d_pixel"
    return {str(p.relative_to(tiles)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(tiles.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A local run's tiles (digests), made in ``<tmp>/run``; the folder is emptied for the next run."""
    run = tmp_path_factory.mktemp("distributed") / "run"
    run.mkdir()
    crop_roi(run / "roi.tiff", width=48, height=40)
    assert pipeline.main([str(run / "roi.tiff"), *DATES, *CATALOG, "-q"]) == 0
    digest = tiles_digest(run)
    return run, digest


def fresh(run: Path) -> Path:
    for child in run.iterdir():
        if child.name != "roi.tiff":
            subprocess.run(["rm", "-rf", str(child)], check=True)
    return run


def test_tiles_on_a_local_cluster_are_byte_identical_to_a_local_run(local_run: tuple[Path, dict[str, str]],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    run, expected = local_run
    # the 4 tiles are one read group: its days are split in 2 ranges, one per worker, then joined
    assert pipeline.main([str(fresh(run) / "roi.tiff"), *DATES, *CATALOG, "--dask-local", "2"]) == 0
    assert tiles_digest(run) == expected
    assert "each group's days are read in 2 ranges" in caplog.text and not (run / "cache").exists()
    assert "2 worker(s) see the run folder" in caplog.text
    assert "tiles: 4 (4 written, 0 already done)" in caplog.text and "; worker tcp://" in caplog.text
    caplog.clear()
    assert pipeline.main([str(run / "roi.tiff"), *DATES, *CATALOG, "--dask-local", "1"]) == 0  # a rerun resumes
    assert "tiles: 4 (0 written, 4 already done)" in caplog.text and tiles_digest(run) == expected


def test_a_worker_killed_mid_tile_has_its_tile_redone(local_run: tuple[Path, dict[str, str]]) -> None:
    run, expected = local_run
    fresh(run)
    proc = subprocess.Popen([sys.executable, "-m", "btfm_preprocessing.pipeline", str(run / "roi.tiff"), *DATES,
                             *CATALOG, "--dask-local", "2", "--workers", "1", "-q"], cwd=run,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    tiles = run / "retiled_d_pixel"
    in_progress = re.compile(r"^\.tmp-\d+_\d+_\d+_\d+\.(\d+)\.")  # .tmp-<tile>.<pid>.<hex>, not other temps
    try:
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and proc.poll() is None and time.monotonic() < deadline:
            # a tile of a day range (2 workers, one read group), or one being joined
            folders = [tiles, *(run / "cache" / "tile_parts").glob("*")]
            pids = [int(m.group(1)) for folder in folders if folder.is_dir() for p in folder.iterdir()
                    if (m := in_progress.match(p.name))]
            victim = pids[0] if pids else None
            time.sleep(0.002)
        assert victim is not None, "no tile was seen in progress"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # never leave the run writing into the next test's folder
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    assert tiles_digest(run) == expected
    assert not [p for p in tiles.rglob("*") if p.name.startswith(".tmp-")] and not (run / "cache").exists()


def demo_jobs(run: Path, *flags: str) -> tuple[pipeline.PreprocessSettings, list[TileJob]]:
    """The settings and tile jobs of a run on the demo catalog (searched, nothing written)."""
    settings = pipeline.settings_from_args(pipeline.build_parser().parse_args([str(run / "roi.tiff"), *DATES,
                                                                                *CATALOG, *flags]))
    s2 = S2_SOURCES[settings.source](settings.source_options)
    s1 = S1_SOURCES[settings.s1_source](settings.source_options)
    s2_scenes, s1_scenes = pipeline.search_scenes(settings, s2, s1)
    settings.tiles_dir.mkdir()
    return settings, pipeline.tile_jobs(settings, pipeline.plan_tiles(settings), group_by_day(s2_scenes),
                                        {d: group_by_day(v) for d, v in split_by_orbit(s1_scenes).items()},
                                        {"run_key": "k"})


@pytest.mark.parametrize("day_ranges", [1, 2])  # one task per group, or two day ranges and a join per group
def test_a_failing_group_is_retried_then_reported_while_the_others_are_written(tmp_path: Path,
                                                                              day_ranges: int) -> None:
    run = tmp_path
    crop_roi(run / "roi.tiff", col=0, row=0, width=96, height=80)  # 3 x 3 tiles of 32 px
    settings, jobs = demo_jobs(run, "--read-group", "2")
    assert [len(job.tiles) for job in jobs] == [4, 2, 2, 1]
    jobs = jobs[:2]
    jobs[1] = dataclasses.replace(jobs[1], roi_path=run / "missing.tiff")  # fails on every try
    client, cluster = connect(None, 2, threads=1)
    written = []
    try:
        failures = run_on_dask(client, jobs, retries=1, on_result=lambda result: written.append(result.tile),
                               day_ranges=day_ranges, parts_dir=settings.layout.tile_parts_dir)
    finally:
        client.close()
        cluster.close()
    assert sorted(failure.split(":")[0] for failure in failures) == sorted(tile.name for tile in jobs[1].tiles)
    assert all("missing.tiff" in failure for failure in failures)
    assert sorted(written) == sorted(tile.name for tile in jobs[0].tiles)
    assert sorted(p.name for p in settings.tiles_dir.iterdir()) == sorted(written)
    # the failed group's finished day ranges (none: its ROI is missing) are kept for a rerun; the other's are gone
    parts = sorted(p.name for p in settings.layout.tile_parts_dir.glob("*"))
    assert not [name for name in parts if name.startswith(jobs[0].tiles[0].name)]


def test_tiles_joined_from_day_ranges_are_those_of_one_pass(tmp_path: Path) -> None:
    crop_roi(tmp_path / "roi.tiff", width=48, height=40)
    settings, jobs = demo_jobs(tmp_path)
    (job,) = jobs  # the 4 tiles of 32 px are one read group
    whole = write_tile_group(job)
    one_pass = tiles_digest(tmp_path)
    joined_dir = tmp_path / "joined" / "retiled_d_pixel"
    joined_dir.mkdir(parents=True)
    joined_job = dataclasses.replace(job, tiles_dir=joined_dir)
    parts = joined_job.day_parts(3, settings.layout.tile_parts_dir)
    assert [len(p.s2_days) for p in parts] == [4, 3, 3] and sum(len(p.s1_days["ascending"]) for p in parts) == 12
    written = [write_tile_group(part) for part in parts]
    results = [join_tile_parts(joined_job, tile, parts, written) for tile in job.tiles]
    assert tiles_digest(tmp_path / "joined") == one_pass
    assert [(r.tile, r.stats.s2_dates, r.stats.s1_dates, r.stats.scenes_used) for r in results] == \
        [(r.tile, r.stats.s2_dates, r.stats.s1_dates, r.stats.scenes_used) for r in whole]
    assert all((r.stats.valid_per_pixel == w.stats.valid_per_pixel).all() for r, w in zip(results, whole, strict=True))
    assert [len(r.part_workers) for r in results] == [3] * 4 and not any(p.tiles_dir.exists() for p in parts)
    assert sum(r.network_bytes or 0 for r in results) == sum(r.network_bytes or 0 for w in written for r in w)
    # a join rerun finds its tile done
    assert join_tile_parts(joined_job, job.tiles[0], parts, [[] for _ in parts]).skipped


class BlindClient:
    """A cluster whose second worker does not see the run folder."""

    def run(self, function: object, *args: str) -> dict[str, bool]:
        assert callable(function)
        return {"tcp://10.0.0.1:1": function(*args), "tcp://10.0.0.2:1": False}


def test_workers_that_do_not_see_the_run_folder_are_named(tmp_path: Path) -> None:
    roi = crop_roi(tmp_path / "roi.tiff")
    with pytest.raises(BTFMError, match=r"1 of 2 Dask worker\(s\) \(tcp://10.0.0.2:1\) do not see the run folder"):
        check_workers_see(BlindClient(), tmp_path, roi)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi.tiff"]  # the probe file is gone


def test_an_unreachable_scheduler_stops_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roi = crop_roi(tmp_path / "roi.tiff")
    assert pipeline.main([str(roi), *DATES, *CATALOG, "--scheduler", "tcp://127.0.0.1:9", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs", "roi.tiff"]


def test_dry_run_prints_the_plan_and_writes_only_the_search_cache(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    roi = crop_roi(tmp_path / "roi.tiff", width=48, height=40)
    assert pipeline.main([str(roi), *DATES, *CATALOG, "--dry-run", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "dry run: 4 tile(s) to write on the 48 x 40 px ROI grid"
    assert out[1].startswith("  tile 0_0_32_32: S2 10 day(s), 10 scene(s); S1 ascending 12 day(s)")
    assert any(line.startswith("reads will fetch: ") and "from the COG block layout" in line for line in out)
    assert any(line.startswith("tiles on disk: ") for line in out)
    assert any(line.startswith("memory per worker: about ") for line in out)
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written[0] == "cache/search-" + written[0].split("search-")[1] and written[1:] == ["roi.tiff"]
    # the disk figure is what the run then writes (no day lacks data here)
    planned = next(line for line in out if line.startswith("tiles on disk: ")).split()[3:5]
    assert pipeline.main([str(roi), *DATES, *CATALOG, "-q"]) == 0
    arrays = sum(p.stat().st_size for p in (tmp_path / "retiled_d_pixel").rglob("*.npy"))
    assert abs(arrays - float(planned[0]) * {"kB": 1e3, "MB": 1e6}[planned[1]]) / arrays < 0.05


def test_dry_run_with_overwrite_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    roi = crop_roi(tmp_path / "roi.tiff")
    assert pipeline.main([str(roi), *DATES, *CATALOG, "--dry-run", "--overwrite", "-q"]) == 2
    assert "--dry-run writes nothing, so --overwrite has no meaning" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi.tiff"]


def test_partial_tiles_that_disagree_with_their_records_are_refused(tmp_path: Path) -> None:
    crop_roi(tmp_path / "roi.tiff", width=32, height=32)
    settings, (job,) = demo_jobs(tmp_path)
    parts = job.day_parts(2, settings.layout.tile_parts_dir)
    written = [write_tile_group(part) for part in parts]
    record = parts[1].tiles_dir / job.tiles[0].name / "tile.json"
    metadata = json.loads(record.read_text())
    record.write_text(json.dumps({**metadata, "s2_dates": metadata["s2_dates"][1:]}))  # one date fewer
    with pytest.raises(TileFormatError, match=r"partial tiles hold 10 days where their tile\.json files name 9"):
        join_tile_parts(job, job.tiles[0], parts, written)
    assert not any(settings.tiles_dir.iterdir())  # nothing half-written


def test_read_groups_follow_the_layout_and_days_split_by_scenes_for_more_workers() -> None:
    tiles = tile_layout(1000, 1500, 500)  # 2 rows x 3 columns of tiles
    assert default_read_group(500) == 2 and default_read_group(32) == 4 and default_read_group(2000) == 1
    assert [[t.name for t in group] for group in tile_groups(tiles, 500, (2, 2))] == [
        ["0_0_500_500", "500_0_1000_500", "0_500_500_1000", "500_500_1000_1000"],
        ["1000_0_1500_500", "1000_500_1500_1000"]]
    assert [day_part_count(groups, 4) for groups in (1, 2, 3, 4, 9)] == [4, 2, 2, 1, 1]
    assert day_part_count(0, 2) == 2
    def days(*scenes: int) -> list[AcquisitionDay]:  # days with that many scenes each (split_days counts them)
        return [AcquisitionDay(dt.date(2021, 1, 1 + i), ("scene",) * n) for i, n in enumerate(scenes)]  # type: ignore[arg-type]

    assert [len(part) for part in split_days(days(3, 1, 1, 1), 2)] == [1, 3]  # 3 scenes, then 3
    assert [len(part) for part in split_days(days(1, 1, 1, 1, 1, 1, 1), 3)] == [3, 2, 2]
    assert sorted(len(part) for part in split_days(days(1, 1, 1), 5)) == [0, 0, 1, 1, 1]  # more ranges than days
    assert split_days([], 3) == [(), (), ()]
    assert sum(split_days(days(*range(1, 30)), 4), ()) == tuple(days(*range(1, 30)))
