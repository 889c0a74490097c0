"""Real recorded STAC items parse into scenes with the right harmonisation decision."""

from __future__ import annotations

from pathlib import Path

import pystac

from btfm_preprocessing.encoding import has_boa_offset
from btfm_preprocessing.sources import EARTH_SEARCH_S2_ASSETS
from btfm_preprocessing.sources.stac_api import to_scene

DATA = Path(__file__).resolve().parents[1] / "data" / "stac"
PC_ASSETS = {band: band for band in ("B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12", "SCL")}


def test_earth_search_item_after_2022() -> None:
    item = pystac.Item.from_file(str(DATA / "earthsearch_S2B_24MVV_20250731_0_L2A.json"))
    scene = to_scene(item, EARTH_SEARCH_S2_ASSETS)
    assert scene.assets["B8A"].endswith("/B8A.tif") and scene.assets["SCL"].endswith("/SCL.tif")
    assert scene.processing_baseline == "05.11" and scene.boa_offset_removed is True
    assert scene.cloud_cover is not None and scene.day.isoformat() == "2025-07-31"
    assert not has_boa_offset(scene.day, scene.processing_baseline, scene.boa_offset_removed)


def test_planetary_computer_item_before_2022() -> None:
    item = pystac.Item.from_file(str(DATA / "pc_S2A_MSIL2A_20190101_T60VUK.json"))
    scene = to_scene(item, PC_ASSETS)
    assert scene.processing_baseline == "02.12" and scene.boa_offset_removed is None
    assert not has_boa_offset(scene.day, scene.processing_baseline, scene.boa_offset_removed)
