"""An ROI that straddles two UTM zones, end to end over HTTP.

One acquisition day is served as two granules, as at a zone boundary: the western half of the
sample in its own zone (UTM 31N) and the eastern half re-projected to UTM 32N. The pipeline
must search both, re-project the 32N granule onto the ROI's 31N grid and mosaic them into one
date whose pixels match the single-granule run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, calculate_default_transform, reproject

from btfm_core.loopback import LoopbackServer
from btfm_core.tiles import read_tile
from btfm_preprocessing import pipeline
from tests.conftest import DEMO_DIR
from tests.preprocessing.test_remote_stac import stac_api

pytestmark = [pytest.mark.enable_socket, pytest.mark.allow_hosts(["127.0.0.1"])]
DATES = ["2021-05-01", "2021-05-31", "2021-05-01", "2021-05-31", "1"]
ITEM = "S2_DEMO_BE_20210501"
SPLIT_COLUMN = 50  # the granules' boundary, in ROI columns
with rasterio.open(DEMO_DIR / "roi.tiff") as _roi:
    DEMO_TRANSFORM_X0 = _roi.transform.c  # the ROI's western edge (metres, UTM 31N)


def _half(src_path: Path, out_path: Path, east: bool, crs: str) -> None:
    """One half of a COG (the other half no data), written in ``crs`` at 10 m."""
    with rasterio.open(src_path) as src:
        data = src.read(1)
        columns = np.arange(src.width) * src.transform.a + src.transform.c
        boundary = DEMO_TRANSFORM_X0 + SPLIT_COLUMN * 10
        keep = columns >= boundary if east else columns < boundary
        data = np.where(keep[None, :], data, 0).astype(data.dtype)
        profile = {**src.profile, "driver": "GTiff", "nodata": 0}
        if crs != str(src.crs):
            transform, width, height = calculate_default_transform(src.crs, crs, src.width, src.height,
                                                                   *src.bounds, resolution=src.transform.a)
            warped = np.zeros((height, width), data.dtype)
            reproject(data, warped, src_transform=src.transform, src_crs=src.crs, dst_transform=transform,
                      dst_crs=crs, resampling=Resampling.nearest, src_nodata=0, dst_nodata=0)
            data, profile = warped, {**profile, "crs": crs, "transform": transform, "width": width, "height": height}
        profile.pop("blockxsize", None), profile.pop("blockysize", None), profile.pop("tiled", None)
    with rasterio.open(out_path, "w", **profile) as dst:
        dst.write(data, 1)


@pytest.fixture
def two_zone_sample(tmp_path: Path) -> Path:
    """The demo sample with the May S2 item replaced by a 31N west granule and a 32N east granule."""
    root = tmp_path / "served"
    shutil.copytree(DEMO_DIR, root)
    item_dir = root / "sentinel-2-l2a" / ITEM
    item = json.loads((item_dir / f"{ITEM}.json").read_text())
    for zone, east, crs in (("31U", False, "EPSG:32631"), ("32U", True, "EPSG:32632")):
        granule = json.loads(json.dumps(item))
        granule["id"] = f"{ITEM}_{zone}"
        out_dir = root / "sentinel-2-l2a" / granule["id"]
        out_dir.mkdir()
        for asset in granule["assets"].values():
            name = Path(asset["href"]).name
            _half(item_dir / name, out_dir / name, east, crs)
            asset["href"] = f"./{name}"
        if east:
            granule["properties"].pop("proj:epsg", None)
            granule["properties"]["proj:code"] = "EPSG:32632"
        granule["links"] = [link for link in granule["links"] if link["rel"] not in ("self",)]
        (out_dir / f"{granule['id']}.json").write_text(json.dumps(granule))
    collection_path = root / "sentinel-2-l2a" / "collection.json"
    collection = json.loads(collection_path.read_text())
    collection["links"] = [link for link in collection["links"] if ITEM not in link.get("href", "")]
    collection["links"] += [{"rel": "item", "href": f"./{ITEM}_{z}/{ITEM}_{z}.json", "type": "application/json"}
                            for z in ("31U", "32U")]
    collection_path.write_text(json.dumps(collection))
    shutil.rmtree(item_dir)
    return root


def test_roi_across_utm_zones_is_mosaicked_from_both_granules(two_zone_sample: Path, tmp_path: Path) -> None:
    for name in ("single", "split"):
        (tmp_path / name).mkdir()
        shutil.copy(DEMO_DIR / "roi.tiff", tmp_path / name / "roi.tiff")
    assert pipeline.main([str(tmp_path / "single" / "roi.tiff"), *DATES, "--tile-size", "100", "-q"]) == 0

    server = LoopbackServer(two_zone_sample)
    server.api = stac_api(server.url, root=two_zone_sample)  # type: ignore[assignment]
    with server:
        assert pipeline.main([str(tmp_path / "split" / "roi.tiff"), *DATES, "--source", "earthsearch",
                              "--s1-source", "none", "--catalog", f"{server.url}/api", "--tile-size", "100",
                              "-q"]) == 0
    assert server.bytes_served["red.tif"] > 0
    single = read_tile(tmp_path / "single" / "retiled_d_pixel" / "0_0_100_100")
    split = read_tile(tmp_path / "split" / "retiled_d_pixel" / "0_0_100_100")
    meta = json.loads((tmp_path / "split" / "retiled_d_pixel" / "0_0_100_100" / "tile.json").read_text())
    assert split.doys.tolist() == single.doys.tolist() == [121]  # one date, from two granules
    assert sorted(meta["s2_scenes"][0]) == [f"{ITEM}_31U", f"{ITEM}_32U"]
    west, east = slice(0, SPLIT_COLUMN - 1), slice(SPLIT_COLUMN + 1, 100)  # away from the seam
    # the western granule is on the ROI grid: identical pixels
    np.testing.assert_array_equal(split.bands[0, :, west], single.bands[0, :, west])
    np.testing.assert_array_equal(split.masks[0, :, west], single.masks[0, :, west])
    # the eastern granule went 31N -> 32N -> 31N: same coverage, values close
    both = (split.masks[0, :, east] == 1) & (single.masks[0, :, east] == 1)
    assert both.mean() > 0.97
    a = split.bands[0, :, east][both].astype(float)
    b = single.bands[0, :, east][both].astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert np.median(np.abs(a - b)) < 0.1 * np.median(b)
