"""Zarr export: xarray/rioxarray and GDAL open it georeferenced; layouts, int8 + scales, atomicity."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from rasterio.env import GDALVersion
from rasterio.errors import RasterioIOError

from btfm_core.roi import open_roi
from btfm_infer import export_zarr
from btfm_infer.export_common import INT8_NODATA
from btfm_infer.export_zarr import (
    DEFAULT_LAYOUT,
    SHARDED_LAYOUT,
    ZarrLayout,
    read_layout,
    write_embedding_zarr,
)
from tests.infer.test_convert_npy2tiff import make_inputs
from tests.infer.test_export_cog import row_cosines

#: rioxarray 0.19 multiplies Affines with ``*`` when it derives a transform (not ours to fix)
pytestmark = pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning:rioxarray.*")

H, W, C = 300, 520, 8  # partial edge chunks and shards: 3 x 5 chunks of 128 px, 2 x 3 shards of 256 px


def open_dataset(path: Path) -> xr.Dataset:
    """``xr.open_zarr`` with no arguments, any warning (e.g. unconsolidated metadata) an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path)


def chunk_files(array_folder: Path) -> list[Path]:
    return [p for p in array_folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json"]


def test_float32_default_layout_and_attributes(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", attributes={"model": {"name": "m.pt"}})
    assert result.dtype == "float32" and result.cosine is None and result.layout == DEFAULT_LAYOUT
    assert read_layout(result.path) == DEFAULT_LAYOUT == ZarrLayout(zarr_format=2, chunk=128)
    assert (result.path / ".zmetadata").is_file()  # consolidated
    group = zarr.open_group(result.path, mode="r")
    assert group.metadata.zarr_format == 2
    array = group["embedding"]
    assert array.shape == (H, W, C) and array.dtype == np.float32
    assert array.chunks == (128, 128, C) and array.shards is None and np.isnan(array.fill_value)
    values = array[:]
    inside = mask != 0
    np.testing.assert_array_equal(values[inside], data[inside])
    assert np.isnan(values[~inside]).all()
    assert "scales" not in group
    assert len(chunk_files(result.path / "embedding")) == 3 * 5  # one file per chunk, all bands in it

    attrs = dict(group.attrs)
    with rasterio.open(roi_path) as src:
        assert attrs["epsg"] == src.crs.to_epsg() == 32631
        assert rasterio.crs.CRS.from_wkt(attrs["crs_wkt"]) == src.crs
        assert rasterio.Affine(*attrs["transform"]) == src.transform
        assert rasterio.Affine.from_gdal(*attrs["geotransform"]) == src.transform
    assert attrs["shape"] == [H, W] and attrs["dimensions"] == ["y", "x", "band"]
    assert attrs["band_names"] == [f"A{i:02d}" for i in range(C)] and attrs["nodata"] == "nan"
    assert attrs["dtype"] == "float32" and attrs["model"] == {"name": "m.pt"}
    assert attrs["format_version"] == 2 and attrs["layout"] == {"zarr_format": 2, "chunks": [128, 128, C],
                                                                "shards": None}
    assert group["embedding"].attrs["grid_mapping"] == "spatial_ref"


def test_xarray_opens_float32_georeferenced(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr")
    ds = open_dataset(result.path)
    grid = open_roi(roi_path).grid
    embedding = ds["embedding"]
    assert embedding.dims == ("y", "x", "band") and list(ds.data_vars) == ["embedding"]
    assert "spatial_ref" in ds.coords and "spatial_ref" in embedding.coords
    assert embedding.rio.crs == rasterio.crs.CRS.from_epsg(32631) and embedding.rio.transform() == grid.transform
    assert ds.rio.crs == embedding.rio.crs and ds.rio.transform() == grid.transform
    assert list(ds["band"].values) == [f"A{i:02d}" for i in range(C)]
    t = grid.transform
    assert ds["x"].values[0] == t.c + 5 and ds["y"].values[0] == t.f - 5
    assert np.allclose(np.diff(ds["x"].values), 10) and np.allclose(np.diff(ds["y"].values), -10)
    assert ds["x"].attrs["standard_name"] == "projection_x_coordinate" and ds["x"].attrs["axis"] == "X"
    assert np.isnan(embedding.encoding["_FillValue"]) and np.isnan(embedding.rio.nodata)
    values = embedding.values
    inside = mask != 0
    np.testing.assert_array_equal(values[inside], data[inside])
    assert np.isnan(values[~inside]).all()
    assert embedding.sel(band="A03").isel(y=123, x=456).values == data[123, 456, 3]


def test_xarray_masks_int8_nodata(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", dtype="int8")
    ds = open_dataset(result.path)
    assert ds["embedding"].encoding["_FillValue"] == INT8_NODATA and ds["embedding"].encoding["dtype"] == np.int8
    assert ds["embedding"].rio.encoded_nodata == INT8_NODATA
    assert ds["scales"].dims == ("y", "x") and ds["scales"].rio.crs == rasterio.crs.CRS.from_epsg(32631)
    inside = mask != 0
    restored = (ds["embedding"] * ds["scales"]).values  # the float embedding, NaN outside the ROI
    assert np.isnan(restored[~inside]).all() and not np.isnan(restored[inside]).any()
    keep = np.abs(data[inside]).sum(1) > 0
    assert row_cosines(restored[inside][keep].astype(np.float64), data[inside][keep].astype(np.float64)).min() > 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw = xr.open_zarr(result.path, mask_and_scale=False)["embedding"].values
    assert raw.dtype == np.int8 and (raw[~inside] == INT8_NODATA).all() and (raw[inside] > INT8_NODATA).all()


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_gdal_opens_default_store(tmp_path: Path, dtype: str) -> None:
    roi_path, npy, _, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", dtype=dtype)
    group = zarr.open_group(result.path, mode="r")
    pixel = np.s_[123:124, 456:457]
    with rasterio.open(roi_path) as ref, rasterio.open(f'ZARR:"{result.path}":/embedding') as src:
        assert src.driver == "Zarr" and (src.count, src.height, src.width) == (C, H, W)
        assert src.crs == ref.crs and src.transform == ref.transform
        assert src.dtypes[0] == dtype and src.block_shapes[0] == (128, 128)
        assert src.tags(4)["DIM_band_VALUE"] == "A03"
        np.testing.assert_array_equal(src.read(window=pixel)[:, 0, 0], group["embedding"][123, 456])
        corner = src.read(1, window=np.s_[0:5, 0:7])
        if dtype == "float32":
            np.testing.assert_array_equal(src.read(window=pixel)[:, 0, 0], data[123, 456])
            assert np.isnan(src.nodata) and np.isnan(corner).all()
        else:
            assert src.nodata == INT8_NODATA and (corner == INT8_NODATA).all()
    if dtype == "int8":
        with rasterio.open(f'ZARR:"{result.path}":/scales') as scales:
            assert scales.crs == ref.crs and scales.transform == ref.transform and scales.count == 1
            assert scales.read(1, window=pixel)[0, 0] == group["scales"][123, 456]


def test_sharded_layout_round_trips(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", dtype="int8", sharding=True)
    assert result.layout == SHARDED_LAYOUT == read_layout(result.path)
    group = zarr.open_group(result.path, mode="r")
    assert group.metadata.zarr_format == 3 and group.metadata.consolidated_metadata is not None
    q, scales = group["embedding"], group["scales"]
    assert q.chunks == (32, 32, C) and q.shards == (256, 256, C) and q.fill_value == INT8_NODATA
    assert scales.chunks == (32, 32) and scales.shards == (256, 256)
    assert q.metadata.dimension_names == ("y", "x", "band")
    assert len(chunk_files(result.path / "embedding")) == 2 * 3  # one file per shard
    inside = mask != 0
    q_values, scale = q[:].astype(np.float64), scales[:].astype(np.float64)
    assert (q_values[~inside] == INT8_NODATA).all() and np.isnan(scale[~inside]).all()
    np.testing.assert_array_equal(q[:], open_default_q(tmp_path, npy, roi_path))  # same bytes as the default
    keep = inside & (np.abs(data).sum(2) > 0)
    assert row_cosines(q_values[keep] * scale[keep][:, None], data[keep].astype(np.float64)).min() > 0.99
    ds = open_dataset(result.path)
    assert ds.rio.crs == rasterio.crs.CRS.from_epsg(32631) and ds.rio.transform() == open_roi(roi_path).grid.transform
    assert list(ds["band"].values) == [f"A{i:02d}" for i in range(C)]
    assert np.isnan(ds["embedding"].values[~inside]).all()
    assert dict(group.attrs)["layout"] == {"zarr_format": 3, "chunks": [32, 32, C], "shards": [256, 256, C]}
    if GDALVersion.runtime() < GDALVersion(3, 13):  # GDAL reads Zarr v3 sharding from 3.13 on (as the help says)
        with pytest.raises(RasterioIOError):
            rasterio.open(f'ZARR:"{result.path}":/embedding')


def open_default_q(tmp_path: Path, npy: Path, roi_path: Path) -> np.ndarray:
    """The int8 q of the same embedding in the default layout."""
    return zarr.open_group(write_embedding_zarr(npy, roi_path, tmp_path / "default.zarr", dtype="int8").path,
                           mode="r")["embedding"][:]


def test_int8_with_scales(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", dtype="int8")
    group = zarr.open_group(result.path, mode="r")
    q, scales = group["embedding"], group["scales"]
    assert q.dtype == np.int8 and q.fill_value == INT8_NODATA
    assert scales.shape == (H, W) and scales.dtype == np.float32
    assert scales.chunks == (128, 128) and scales.shards is None
    inside = mask != 0
    q_values, scale = q[:].astype(np.float64), scales[:].astype(np.float64)
    assert (q_values[~inside] == INT8_NODATA).all() and np.isnan(scale[~inside]).all()
    restored = q_values[inside] * scale[inside][:, None]
    original = data[inside].astype(np.float64)
    keep = np.abs(original).sum(1) > 0
    cos = row_cosines(restored[keep], original[keep])
    assert cos.min() > 0.99
    attrs = dict(group.attrs)
    assert attrs["dtype"] == "int8" and attrs["nodata"] == INT8_NODATA
    assert attrs["int8_cosine"]["pixels"] == keep.sum()
    assert attrs["int8_cosine"]["mean"] == pytest.approx(cos.mean(), abs=1e-6)
    assert open_dataset(result.path).attrs["int8_cosine"] == attrs["int8_cosine"]  # consolidated after the update
    assert result.cosine is not None and result.cosine.count == keep.sum()


def test_overwrite_replaces_whole_store(tmp_path: Path) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    out = tmp_path / "emb.zarr"
    write_embedding_zarr(npy, roi_path, out, dtype="int8", sharding=True)
    write_embedding_zarr(npy, roi_path, out)
    group = zarr.open_group(out, mode="r")
    assert "scales" not in group and group["embedding"].dtype == np.float32 and group.metadata.zarr_format == 2
    assert not (out / "zarr.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.zarr", "roi.tiff", "stitched_representation.npy"]


def test_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path, height=H, width=W, dim=C)
    calls = []

    def failing_quantise(values: np.ndarray, rule: str = "v1.0") -> tuple[np.ndarray, np.ndarray]:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed")
        return real(values, rule)

    real = export_zarr.quantise_int8
    monkeypatch.setattr(export_zarr, "quantise_int8", failing_quantise)
    with pytest.raises(RuntimeError, match="killed"):
        write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", dtype="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi.tiff", "stitched_representation.npy"]
