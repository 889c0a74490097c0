"""Zarr v3 export: round trip, georeferencing attributes, chunking, int8 + scales, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from btfm_core.roi import open_roi
from btfm_infer import export_zarr
from btfm_infer.export_common import INT8_NODATA
from btfm_infer.export_zarr import CHUNK_SIZE, SHARD_SIZE, write_embedding_zarr
from tests.infer.test_convert_npy2tiff import make_inputs
from tests.infer.test_export_cog import row_cosines

H, W, C = 300, 520, 8  # two shard rows, three shard columns, partial edge shards


def test_float32_round_trip_and_attributes(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", attributes={"model": {"name": "m.pt"}})
    assert result.dtype == "float32" and result.cosine is None
    group = zarr.open_group(result.path, mode="r")
    assert group.metadata.zarr_format == 3
    array = group["embedding"]
    assert array.shape == (H, W, C) and array.dtype == np.float32
    assert array.chunks == (CHUNK_SIZE, CHUNK_SIZE, C) and array.shards == (SHARD_SIZE, SHARD_SIZE, C)
    assert array.metadata.dimension_names == ("y", "x", "band")
    assert np.isnan(array.fill_value)
    values = array[:]
    inside = mask != 0
    np.testing.assert_array_equal(values[inside], data[inside])
    assert np.isnan(values[~inside]).all()
    np.testing.assert_array_equal(array[123, 456], data[123, 456])  # one pixel's vector
    assert "scales" not in group
    # one file per shard, all bands in it
    shard_files = [p for p in (result.path / "embedding").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(shard_files) == 2 * 3

    roi = open_roi(roi_path)
    attrs = dict(group.attrs)
    with rasterio.open(roi_path) as src:
        assert attrs["epsg"] == src.crs.to_epsg() == 32631
        assert rasterio.crs.CRS.from_wkt(attrs["crs_wkt"]) == src.crs
        assert rasterio.Affine(*attrs["transform"]) == src.transform
        assert rasterio.Affine.from_gdal(*attrs["geotransform"]) == src.transform
    assert attrs["shape"] == [H, W] and attrs["dimensions"] == ["y", "x", "band"]
    assert attrs["band_names"] == [f"A{i:02d}" for i in range(C)] and attrs["nodata"] == "nan"
    assert attrs["dtype"] == "float32" and attrs["model"] == {"name": "m.pt"}
    x, y = group["x"][:], group["y"][:]
    t = roi.grid.transform
    assert x[0] == t.c + 5 and y[0] == t.f - 5 and x.shape == (W,) and y.shape == (H,)
    assert np.allclose(np.diff(x), 10) and np.allclose(np.diff(y), -10)
    spatial_ref = dict(group["spatial_ref"].attrs)
    assert spatial_ref["crs_wkt"] == roi.grid.crs
    assert rasterio.Affine.from_gdal(*map(float, spatial_ref["GeoTransform"].split())) == t
    assert array.attrs["grid_mapping"] == "spatial_ref"


def test_int8_with_scales(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_zarr(npy, roi_path, tmp_path / "emb.zarr", dtype="int8")
    group = zarr.open_group(result.path, mode="r")
    q, scales = group["embedding"], group["scales"]
    assert q.dtype == np.int8 and q.fill_value == INT8_NODATA
    assert scales.shape == (H, W) and scales.dtype == np.float32
    assert scales.chunks == (CHUNK_SIZE, CHUNK_SIZE) and scales.shards == (SHARD_SIZE, SHARD_SIZE)
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
    assert result.cosine is not None and result.cosine.count == keep.sum()


def test_overwrite_replaces_whole_store(tmp_path: Path) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    out = tmp_path / "emb.zarr"
    write_embedding_zarr(npy, roi_path, out, dtype="int8")
    write_embedding_zarr(npy, roi_path, out)
    group = zarr.open_group(out, mode="r")
    assert "scales" not in group and group["embedding"].dtype == np.float32
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
