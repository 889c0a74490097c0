"""Splitting tiles between CPU and GPU workers."""

from __future__ import annotations

import pytest

from btfm_core.errors import BTFMError
from btfm_core.tiles import tile_layout
from btfm_infer.infer_all_tiles import parse_split, plan_workers

TILES = tile_layout(100, 100, 10)  # 100 tiles


def test_ratio_split_between_cpu_and_gpu() -> None:
    plans = plan_workers(TILES, (1, 3), max_cpu=2, n_gpu=2, cores=16, cpu_batch_size=64, gpu_batch_size=4096)
    by_device = {p.name: p for p in plans}
    cpu = sum(len(p.tiles) for p in plans if p.device == "cpu")
    assert cpu == 25 and sum(len(p.tiles) for p in plans) == 100
    assert by_device["cpu_0"].threads == 8 and by_device["gpu_1"].device == "cuda:1"
    assert by_device["gpu_0"].batch_size == 4096
    assert len({t for p in plans for t in p.tiles}) == 100  # every tile exactly once


def test_no_gpu_sends_everything_to_cpu() -> None:
    plans = plan_workers(TILES, (1, 1), max_cpu=3, n_gpu=0, cores=2, cpu_batch_size=64, gpu_batch_size=4096)
    assert {p.device for p in plans} == {"cpu"} and len(plans) == 3
    assert sum(len(p.tiles) for p in plans) == 100 and all(p.threads == 1 for p in plans)


def test_more_workers_than_tiles() -> None:
    plans = plan_workers(TILES[:1], (1, 0), max_cpu=4, n_gpu=0, cores=4, cpu_batch_size=8, gpu_batch_size=8)
    assert len(plans) == 1 and plans[0].threads == 4


@pytest.mark.parametrize("text", ["1", "a:b", "0:0", "-1:2"])
def test_bad_split(text: str) -> None:
    with pytest.raises(BTFMError):
        parse_split(text)
