"""The run folder's one owner (btfm_core.run): paths, records, schema versions, shell assignments."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from btfm_core import run
from btfm_core.run import InferenceRecord, RunLayout, RunMetadata, RunRecordError, finished_run_metadata

REPO = Path(__file__).resolve().parents[2]


def test_layout_paths_and_the_folder_a_path_belongs_to(tmp_path: Path) -> None:
    layout = RunLayout(tmp_path)
    assert layout.tiles_dir == tmp_path / "retiled_d_pixel"
    assert layout.representation_dir == tmp_path / "representation_retiled"
    assert layout.run_metadata_file == tmp_path / "retiled_d_pixel" / "run_metadata.json"
    assert layout.inference_record_file == tmp_path / "representation_retiled" / "inference.json"
    assert layout.stitched(".stac.json") == tmp_path / "stitched_representation.stac.json"
    assert layout.log_file("stitch") == tmp_path / "logs" / "stitch.log"
    for inside in (layout.tiles_dir, layout.representation_dir, layout.stitched_npy, layout.roi):
        assert RunLayout.around(inside) == layout
    assert RunLayout.around(tmp_path) == layout


def test_run_metadata_round_trip_keeps_the_file_layout(tmp_path: Path) -> None:
    written = RunMetadata(run_key="k", roi="/data/roi.tiff", s2_period="2021-01-01..2021-12-31", max_cloud=80.0,
                          tile_size=500, s2_scenes=3, s1_backscatter_recorded=("sigma0",),
                          sources={"source": "earthsearch", "s2_collection": "sentinel-2-l2a"})
    path = written.write(tmp_path / "run_metadata.json")
    data = json.loads(path.read_text())
    assert list(data)[:2] == ["source", "s2_collection"]  # the sources flat, first, as before
    assert data["s1_backscatter_recorded"] == ["sigma0"] and data["schema_version"] == run.SCHEMA_VERSION
    assert "s1_scenes" not in data  # unknown values are left out, not written as null
    assert RunMetadata.read(path) == written
    assert RunMetadata.read(path).get("source") == "earthsearch" and RunMetadata.read(path).get("x", 1) == 1


def test_a_record_of_an_older_version_is_read_and_a_newer_one_refused(tmp_path: Path) -> None:
    old = tmp_path / "run_metadata.json"
    old.write_text(json.dumps({"source": "local", "tile_size": 50, "run_key": "abc"}))
    metadata = RunMetadata.read(old)
    assert (metadata.schema_version, metadata.tile_size, metadata.sources) == (1, 50, {"source": "local"})
    old.write_text(json.dumps({"source": "local", "schema_version": run.SCHEMA_VERSION + 1}))
    with pytest.raises(RunRecordError, match="upgrade BTFM"):
        RunMetadata.read(old)


def test_missing_unreadable_and_lenient_run_metadata(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert finished_run_metadata(tmp_path) is None  # a run that is not finished
    (tmp_path / "run_metadata.json").write_text("{nope")
    with pytest.raises(RunRecordError, match="not readable JSON"):
        finished_run_metadata(tmp_path)
    assert finished_run_metadata(tmp_path, strict=False) is None and "ignoring it" in caplog.text
    with pytest.raises(RunRecordError, match="does not exist"):
        RunMetadata.read(tmp_path / "absent.json")
    (tmp_path / "run_metadata.json").write_text("[1]")
    with pytest.raises(RunRecordError, match="expected a JSON object"):
        finished_run_metadata(tmp_path)


def test_inference_records_compare_what_makes_the_embeddings(tmp_path: Path) -> None:
    model = {"name": "a.pt", "sha256": "00", "family": "v1.0", "embedding_dim": 128, "stats": "v1.0"}
    record = InferenceRecord(model, 0, 1, "fp32")
    path = record.write(tmp_path / "inference.json")
    legacy = {k: v for k, v in json.loads(path.read_text()).items() if k != "schema_version"}
    assert InferenceRecord.from_json(legacy).same_embeddings(record)  # a record written before versions
    other = InferenceRecord({**model, "sha256": "ff"}, 1, 1, "fp32")
    assert not other.same_embeddings(record)
    assert other.differences(record) == "model sha256: 00 -> ff; seed: 0 -> 1"
    with pytest.raises(RunRecordError, match="no model or precision"):
        InferenceRecord.from_json({"seed": 0})


def test_shell_assignments_for_the_bash_drivers(tmp_path: Path) -> None:
    folder = tmp_path / "a run's folder"
    out = subprocess.run([sys.executable, "-m", "btfm_core.run", str(folder)], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    shell = subprocess.run(["bash", "-c", 'eval "$1"; printf "%s\\n" "$TILES_DIR" "$STITCHED_TIF"', "_", out],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert shell == [str(RunLayout(folder).tiles_dir), str(RunLayout(folder).stitched(".tif"))]
    assert subprocess.run([sys.executable, "-m", "btfm_core.run"], capture_output=True, cwd=REPO).returncode == 2


def test_no_module_spells_the_run_folder_names() -> None:
    names = {run.TILES_DIRNAME, run.REPRESENTATION_DIRNAME, run.RUN_METADATA_FILE, run.INFERENCE_RECORD_FILE,
             run.CACHE_DIRNAME, run.TILE_PARTS_DIRNAME, run.LOGS_DIRNAME, f"{run.STITCHED_STEM}.npy"}
    found = []
    for path in sorted(REPO.glob("btfm_*/**/*.py")) + sorted(REPO.glob("scripts/*.py")):
        if path == REPO / "btfm_core" / "run.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.value!r}")
    assert not found, "use btfm_core.run.RunLayout: " + ", ".join(found)
