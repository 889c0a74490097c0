"""Map inputs on the real Slovenia crop: label rasters, vector rasterisation, parcels, tile features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import Transformer

from btfm_core.errors import InputDataError
from btfm_eval.errors import GridMismatchError, LabelError
from btfm_eval.features import raw_band_statistics
from btfm_eval.maps import (
    map_eval_data,
    map_labels,
    rasterize_vector,
    read_embedding_map,
    read_feature_raster,
    read_label_raster,
    tile_series,
)
from btfm_infer.sampling import S2_MEAN, S2_STD


def lulc(run: Path) -> np.ndarray:
    with rasterio.open(run / "labels_lulc.tif") as src:
        return src.read(1)


def polygonise(run: Path, out: Path, crs: str | None = None) -> Path:
    """The LULC raster's connected regions as polygons (real labels as a vector file)."""
    with rasterio.open(run / "labels_lulc.tif") as src:
        data, transform, src_crs = src.read(1), src.transform, src.crs
    shapes = [(shapely.geometry.shape(g), int(v)) for g, v in rasterio.features.shapes(data, transform=transform)]
    geoms = [g for g, _ in shapes]
    if crs is not None:
        t = Transformer.from_crs(src_crs, crs, always_xy=True)
        geoms = list(shapely.transform(np.array(geoms), lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1]))))
    pyogrio.raw.write(out, shapely.to_wkb(np.array(geoms)), [np.array([v for _, v in shapes], np.int32)],
                      fields=["lulc"], crs=crs or src_crs.to_wkt(), geometry_type="Polygon",
                      driver="GeoJSON" if out.suffix == ".geojson" else "GPKG")
    return out


def test_vector_labels_burn_back_to_the_raster(slovenia_run: Path, tmp_path: Path) -> None:
    emap = read_embedding_map(slovenia_run / "stitched_representation.tif")
    native = rasterize_vector(polygonise(slovenia_run, tmp_path / "lulc.gpkg"), "lulc", emap.grid)
    np.testing.assert_array_equal(native.values[native.feature_id - 1], lulc(slovenia_run))
    wgs84 = rasterize_vector(polygonise(slovenia_run, tmp_path / "lulc.geojson", "EPSG:4326"), "lulc", emap.grid)
    agree = np.mean(wgs84.values[wgs84.feature_id - 1] == lulc(slovenia_run))
    assert agree > 0.97  # reprojected polygon edges may move a few boundary pixel centres


def test_vector_label_errors(slovenia_run: Path, tmp_path: Path) -> None:
    emap = read_embedding_map(slovenia_run / "stitched_representation.tif")
    path = polygonise(slovenia_run, tmp_path / "lulc.gpkg")
    with pytest.raises(LabelError, match=r"no column .crop.*lulc"):
        rasterize_vector(path, "crop", emap.grid)
    far = emap.grid.window(0, 0, 32, 32)
    shifted = type(far)(far.crs, Affine.translation(50_000, 0) @ far.transform, far.height, far.width)
    with pytest.raises(LabelError, match="outside the map"):
        rasterize_vector(path, "lulc", shifted)
    with pytest.raises(LabelError, match="--label-column"):
        map_labels(path, emap.grid, "classification", None)


def test_label_raster_on_another_grid_is_reprojected(slovenia_run: Path, tmp_path: Path) -> None:
    emap = read_embedding_map(slovenia_run / "stitched_representation.tif")
    labels = lulc(slovenia_run)
    half = tmp_path / "half.tif"  # 5 m pixels: each map pixel centre falls in one of them
    with rasterio.open(half, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint16",
                       crs=emap.grid.rasterio_crs, transform=emap.grid.transform @ Affine.scale(0.5)) as dst:
        dst.write(np.kron(labels, np.ones((2, 2), np.uint16)), 1)
    np.testing.assert_array_equal(read_label_raster(half, emap.grid), labels)
    outside = tmp_path / "outside.tif"
    with rasterio.open(outside, "w", driver="GTiff", width=32, height=32, count=1, dtype="uint16", nodata=0,
                       crs=emap.grid.rasterio_crs,
                       transform=Affine.translation(10_000, 0) @ emap.grid.transform) as dst:
        dst.write(labels, 1)
    with pytest.raises(LabelError, match="outside the map"):
        read_label_raster(outside, emap.grid)


def test_parcel_aggregation_is_the_mean_per_polygon(slovenia_run: Path, tmp_path: Path) -> None:
    emap = read_embedding_map(slovenia_run / "stitched_representation.tif")
    labels = map_labels(polygonise(slovenia_run, tmp_path / "lulc.gpkg"), emap.grid, "classification", "lulc")
    pixels, rows, cols = map_eval_data(emap, labels, "classification", ignore=("0",), block_size=8)
    parcels, _, _ = map_eval_data(emap, labels, "classification", ignore=("0",), block_size=8, aggregate=True)
    ids = labels.unit[rows, cols]
    assert len(parcels) == len(np.unique(ids)) < len(pixels)
    biggest = np.bincount(ids).argmax()
    at = list(parcels.groups).index(f"parcel{biggest}")
    np.testing.assert_allclose(parcels.features["embeddings"][at],
                               emap.data[rows[ids == biggest], cols[ids == biggest]].mean(0), rtol=1e-5)
    assert parcels.target[at] == str(lulc(slovenia_run)[rows[ids == biggest][0], cols[ids == biggest][0]])
    # pixels of one parcel share one block, even where the parcel straddles block edges
    for group in np.unique(pixels.groups):
        assert len(set(pixels.blocks[pixels.groups == group])) == 1


def test_tile_series_and_raw_features(slovenia_run: Path, tmp_path: Path) -> None:
    emap = read_embedding_map(slovenia_run / "stitched_representation.tif")
    rows, cols = np.array([0, 5, 31, 17]), np.array([0, 20, 31, 3])
    series = tile_series(slovenia_run / "retiled_d_pixel", emap.grid, rows, cols)
    assert series.s2_bands.shape == (4, 5, 10) and series.s1.shape == (4, 0, 2)
    feats = raw_band_statistics(series)
    assert feats.shape == (4, 5 * 11 + 11 * 7)
    valid = series.s2_masks[1].astype(bool)
    expected = ((series.s2_bands[1, valid, 0] - S2_MEAN[0]) / S2_STD[0]).mean()
    assert feats[1, 5 * 11] == pytest.approx(expected, rel=1e-5)  # mean of standardised B04
    wrong = type(emap.grid)(emap.grid.crs, Affine.translation(100, 0) @ emap.grid.transform, 32, 32)
    with pytest.raises(GridMismatchError, match="does not lie on the embedding map's grid"):
        tile_series(slovenia_run / "retiled_d_pixel", wrong, rows, cols)


def test_feature_raster_must_share_the_grid(slovenia_run: Path, tmp_path: Path) -> None:
    emap = read_embedding_map(slovenia_run / "stitched_representation.tif")
    cube = np.random.default_rng(0).random((3, 31, 32)).astype(np.float32)
    path = tmp_path / "raw.tif"
    with rasterio.open(path, "w", driver="GTiff", width=32, height=31, count=3, dtype="float32",
                       crs=emap.grid.rasterio_crs, transform=emap.grid.transform) as dst:
        dst.write(cube)
    with pytest.raises(GridMismatchError, match="not on the embedding map's grid"):
        read_feature_raster(path, emap.grid)


def test_int8_export_is_read_back_as_embeddings(slovenia_run: Path, tmp_path: Path) -> None:
    from btfm_infer import convert_npy2tiff

    out = tmp_path / "emb_int8.tif"
    assert convert_npy2tiff.main(["--npy", str(slovenia_run / "stitched_representation.npy"), "--ref-tiff",
                                  str(slovenia_run / "roi.tiff"), "--out", str(out), "--dtype", "int8",
                                  "--no-png", "--no-stac", "-q"]) == 0
    exact = read_embedding_map(slovenia_run / "stitched_representation.tif")
    quantised = read_embedding_map(out)
    a, b = exact.data[exact.valid], quantised.data[exact.valid]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert (quantised.valid == exact.valid).all() and cosine.min() > 0.999
    (tmp_path / "emb_int8_scales.tif").unlink()
    with pytest.raises(InputDataError, match="scales"):
        read_embedding_map(out)
