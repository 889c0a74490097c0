"""Inference settings are decided once at the command line and reach the workers as one JSON job."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from btfm_core.errors import BTFMError
from btfm_core.tiles import TileId
from btfm_infer.infer_all_tiles import InferSettings, WorkerPlan, build_parser, settings_from_args, worker_job
from btfm_infer.tile_inference import InferenceOptions
from btfm_infer.worker import WorkerJob, read_job


def settings_for(tmp_path: Path, *extra: str) -> InferSettings:
    return settings_from_args(build_parser().parse_args(["--tiles-dir", str(tmp_path / "run" / "retiled_d_pixel"),
                                                         "--max-gpu", "0", *extra]))


def test_settings_resolve_the_run_folder_and_are_frozen(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "--seed", "3", "--dim", "64", "--cpu-batch-size", "256")
    assert settings.output_dir == tmp_path / "run" / "representation_retiled"
    assert settings.log_dir == tmp_path / "run" / "logs"
    assert settings.options == InferenceOptions(3, 1, 256, "auto", "torch", "auto", None, 64)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.max_cpu = 4  # type: ignore[misc]


@pytest.mark.parametrize(("flags", "phrase"), [
    (["--seed", "-2"], "--seed must be a non-negative integer"),
    (["--max-cpu", "0"], "no worker to run"),
    (["--engine", "onnxruntime", "--precision", "bf16"], "applies to the torch engine"),
    (["--cpu-gpu-split", "x"], "is not CPU:GPU"),
])
def test_bad_flags_are_refused_at_the_edge(tmp_path: Path, flags: list[str], phrase: str) -> None:
    with pytest.raises(BTFMError, match=phrase):
        settings_for(tmp_path, *flags)


def test_a_worker_job_carries_the_settings_and_round_trips_as_json(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, "--seed", "5", "--repeat", "2", "--engine", "onnxruntime")
    plan = WorkerPlan("cpu_1", "cpu", 3, 512, (TileId(0, 0, 4, 4), TileId(4, 0, 8, 4)), "fp32")
    job = worker_job(plan, settings)
    assert job.tiles == ("0_0_4_4", "4_0_8_4") and (job.device, job.threads) == ("cpu", 3)
    assert job.options == dataclasses.replace(settings.options, precision="fp32", batch_size=512)
    assert job.log_file == settings.log_dir / "infer_cpu_1.log" and job.failure_file is not None
    assert WorkerJob.from_json(job.to_json()) == job
    path = tmp_path / "job.json"
    path.write_text(job.to_json())
    assert read_job(str(path)) == job == read_job(job.to_json())


@pytest.mark.parametrize(("text", "phrase"), [
    ("[1]", "not an object"),
    ('{"tiles_dir": "t", "output_dir": "o", "checkpoint": "c"}', "KeyError"),
    ('{"tiles_dir": "t", "output_dir": "o", "checkpoint": "c", "tiles": [], "colour": 1}', "colour"),
    ('{"tiles_dir": "t", "output_dir": "o", "checkpoint": "c", "tiles": [], "options": {"sed": 1}}', "sed"),
])
def test_a_job_that_is_not_one_is_one_clear_error(text: str, phrase: str) -> None:
    with pytest.raises(BTFMError, match=f"not a worker job.*{phrase}"):
        WorkerJob.from_json(text)
