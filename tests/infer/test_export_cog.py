"""Cloud-Optimised GeoTIFF export: layout, overviews, nodata, tags, int8 + scales, atomicity."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from btfm_core.errors import BTFMError
from btfm_infer import export_cog
from btfm_infer.export_cog import SCALE_DESCRIPTION, scales_path, write_embedding_cog
from btfm_infer.export_common import INT8_NODATA, CosineStats, quantise_int8
from tests.infer.test_convert_npy2tiff import make_inputs

H, W, C = 600, 520, 6
#: TIFF tags and values the signed int8 layout needs (TIFF 6.0; GDAL_NODATA is GDAL's ASCII tag).
BITS_PER_SAMPLE, SAMPLE_FORMAT, GDAL_NODATA = 258, 339, 42113
SIGNED_INT, IEEE_FLOAT = 2, 3
#: struct codes of the TIFF field types read here: BYTE, ASCII, SHORT, LONG, LONG8.
TIFF_FIELD_TYPES = {1: "B", 2: "s", 3: "H", 4: "I", 16: "Q"}


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between matching rows of two (N, C) arrays."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def first_ifd_offset(path: Path) -> int:
    """Offset of the first IFD from the TIFF header (classic or BigTIFF, little endian)."""
    head = path.read_bytes()[:16]
    assert head[:2] == b"II"
    version = struct.unpack("<H", head[2:4])[0]
    return struct.unpack("<I", head[4:8])[0] if version == 42 else struct.unpack("<Q", head[8:16])[0]


def tiff_ifds(path: Path) -> list[dict[int, tuple[int, ...] | bytes]]:
    """Tags of every IFD (full resolution, then the overviews): tag -> values (ASCII: bytes)."""
    data = path.read_bytes()
    big = struct.unpack_from("<H", data, 2)[0] == 43
    count_code, pointer, entry_size = ("<Q", "<Q", 20) if big else ("<H", "<I", 12)
    inline = struct.calcsize(pointer)  # values up to this size sit in the entry itself
    ifds, offset = [], first_ifd_offset(path)
    while offset:
        (entries,) = struct.unpack_from(count_code, data, offset)
        start = offset + struct.calcsize(count_code)
        tags: dict[int, tuple[int, ...] | bytes] = {}
        for entry in range(start, start + entries * entry_size, entry_size):
            tag, kind = struct.unpack_from("<HH", data, entry)
            (count,) = struct.unpack_from(pointer, data, entry + 4)
            if kind not in TIFF_FIELD_TYPES:
                continue
            code, where = TIFF_FIELD_TYPES[kind], entry + 4 + inline
            if struct.calcsize(code) * count > inline:
                (where,) = struct.unpack_from(pointer, data, where)
            tags[tag] = data[where:where + count] if code == "s" else struct.unpack_from(f"<{count}{code}", data, where)
        ifds.append(tags)
        (offset,) = struct.unpack_from(pointer, data, start + entries * entry_size)
    return ifds


def block_offset(path: Path, overview_level: int | None = None) -> int:
    kwargs = {} if overview_level is None else {"overview_level": overview_level}
    with rasterio.open(path, **kwargs) as src:
        return int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))


def assert_valid_cog(path: Path) -> list[int]:
    """The checks of GDAL's validate_cloud_optimized_geotiff.py that matter here; returns the overview factors."""
    with rasterio.open(path) as src:
        assert src.driver == "GTiff"
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and set(src.block_shapes) == {(256, 256)}
        factors = src.overviews(1)
        assert factors and all(src.overviews(b) == factors for b in src.indexes)
    head = path.read_bytes()[:400]
    assert b"GDAL_STRUCTURAL_METADATA_SIZE" in head and b"LAYOUT=IFDS_BEFORE_DATA" in head
    assert first_ifd_offset(path) < 400  # the main IFD right after the ghost header, before any data
    # tile data: smallest overview first, full resolution last
    offsets = [block_offset(path, level) for level in reversed(range(len(factors)))] + [block_offset(path)]
    assert offsets == sorted(offsets)
    return factors


def test_float32_cog(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_cog(npy, roi_path, tmp_path / "emb.tif", tags={"BTFM_CHECKPOINT": "m.pt"})
    assert result.scales is None and result.cosine is None and result.dtype == "float32"
    factors = assert_valid_cog(result.path)
    assert factors == [2, 4]
    with rasterio.open(result.path) as src:
        assert np.isnan(src.nodata) and src.dtypes == ("float32",) * C
        assert src.descriptions == ("A00", "A01", "A02", "A03", "A04", "A05")
        assert src.interleaving.name.lower() == "pixel" and src.compression.name.lower() == "deflate"
        assert src.tags(ns="IMAGE_STRUCTURE")["PREDICTOR"] == "3"
        assert src.tags()["BTFM_CHECKPOINT"] == "m.pt"
        values = np.moveaxis(src.read(), 0, -1)
        overview = np.moveaxis(src.read(out_shape=(C, H // 2, W // 2)), 0, -1)  # served from the 2x overview
    inside = mask != 0
    np.testing.assert_array_equal(values[inside], data[inside])
    assert np.isnan(values[~inside]).all()
    # nearest-neighbour overviews: every overview pixel is one of its four full-resolution pixels
    full = np.where(inside[..., None], data, np.nan)
    for i, j in [(0, 0), (7, 11), (150, 200), (299, 259)]:
        candidates = full[2 * i:2 * i + 2, 2 * j:2 * j + 2].reshape(-1, C)
        assert any(np.array_equal(overview[i, j], c, equal_nan=True) for c in candidates)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.tif", "roi.tiff", "stitched_representation.npy"]


def test_int8_cog_and_scales(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=H, width=W, dim=C)
    result = write_embedding_cog(npy, roi_path, tmp_path / "emb.tif", dtype="int8")
    assert result.scales == scales_path(result.path) == tmp_path / "emb_scales.tif"
    assert assert_valid_cog(result.path) == assert_valid_cog(result.scales)
    with rasterio.open(result.path) as q_src, rasterio.open(result.scales) as s_src:
        assert q_src.nodata == INT8_NODATA and q_src.dtypes[0] == "int8"
        assert np.isnan(s_src.nodata) and s_src.descriptions == (SCALE_DESCRIPTION,)
        assert q_src.transform == s_src.transform and q_src.crs == s_src.crs
        assert q_src.tags()["BTFM_INT8_COSINE_MEAN"] == f"{result.cosine.mean:.6f}"
        q = np.moveaxis(q_src.read(), 0, -1).astype(np.float64)
        scale = s_src.read(1).astype(np.float64)
        q_ov = np.moveaxis(q_src.read(out_shape=(C, H // 4, W // 4)), 0, -1).astype(np.float64)
        s_ov = s_src.read(1, out_shape=(H // 4, W // 4)).astype(np.float64)
    inside = mask != 0
    assert (q[~inside] == INT8_NODATA).all() and np.isnan(scale[~inside]).all()
    restored = q[inside] * scale[inside][:, None]
    original = data[inside].astype(np.float64)
    keep = np.abs(original).sum(1) > 0
    cos = row_cosines(restored[keep], original[keep])
    assert result.cosine is not None and result.cosine.count == keep.sum()
    assert result.cosine.mean == pytest.approx(cos.mean(), abs=1e-9)
    assert result.cosine.minimum == pytest.approx(cos.min(), abs=1e-9)
    assert cos.min() > 0.99
    # the int8 and scale overviews pick the same pixels, so they still multiply to an embedding
    restored_ov = q_ov * s_ov[..., None]
    full = np.where(inside[..., None], data, np.nan)
    i, j = 100, 90
    candidates = full[4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(-1, C)
    best = max(float(np.dot(restored_ov[i, j], c) / (np.linalg.norm(restored_ov[i, j]) * np.linalg.norm(c)))
               for c in candidates if np.isfinite(c).all() and c.any())
    assert best > 0.99


def test_int8_signed_layout_for_old_and_new_gdal(tmp_path: Path) -> None:
    """SampleFormat=2 on every IFD: GDAL >= 3.7 (rasterio) reads Int8, GDAL < 3.7 Byte + PIXELTYPE=SIGNEDBYTE."""
    roi_path, npy, _, _ = make_inputs(tmp_path, height=300, width=280, dim=C)
    result = write_embedding_cog(npy, roi_path, tmp_path / "emb.tif", dtype="int8")
    ifds = tiff_ifds(result.path)
    assert len(ifds) == 2  # full resolution and the 2x overview, both signed
    for tags in ifds:
        assert tags[BITS_PER_SAMPLE] == (8,) * C and tags[SAMPLE_FORMAT] == (SIGNED_INT,) * C
        assert tags[GDAL_NODATA] == b"-128\0"
    assert [(tags[BITS_PER_SAMPLE], tags[SAMPLE_FORMAT]) for tags in tiff_ifds(result.scales)] == [
        ((32,), (IEEE_FLOAT,))] * 2
    with rasterio.open(result.path) as src:
        assert src.dtypes == ("int8",) * C and src.nodata == INT8_NODATA
        assert src.read(1).min() == INT8_NODATA  # stored as signed, not as 128


def gdalinfo_version() -> tuple[int, int]:
    """(major, minor) of the ``gdalinfo`` on PATH (e.g. Debian 12's gdal-bin: 3.6)."""
    text = subprocess.run(["gdalinfo", "--version"], capture_output=True, text=True, check=True).stdout
    match = re.match(r"GDAL (\d+)\.(\d+)", text)
    assert match, text
    return int(match[1]), int(match[2])


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="no gdalinfo on PATH (apt-get install gdal-bin)")
def test_int8_read_as_signed_by_gdalinfo(tmp_path: Path) -> None:
    """The system's GDAL (older than rasterio's on Debian 12) reports signed bytes, nodata -128, signed min/max."""
    roi_path, npy, _, _ = make_inputs(tmp_path, height=300, width=280, dim=C)
    result = write_embedding_cog(npy, roi_path, tmp_path / "emb.tif", dtype="int8")
    env = {**os.environ, "GDAL_PAM_ENABLED": "NO"}  # no .aux.xml beside the file
    info = json.loads(subprocess.run(["gdalinfo", "-json", "-stats", str(result.path)], capture_output=True,
                                     text=True, check=True, env=env).stdout)
    with rasterio.open(result.path) as src:
        q = src.read(1)
    band = info["bands"][0]
    if gdalinfo_version() < (3, 7):
        assert band["type"] == "Byte" and band["metadata"]["IMAGE_STRUCTURE"]["PIXELTYPE"] == "SIGNEDBYTE"
    else:
        assert band["type"] == "Int8"
    valid = q[q != INT8_NODATA]
    assert band["noDataValue"] == INT8_NODATA
    assert (band["minimum"], band["maximum"]) == (valid.min(), valid.max()) and valid.min() < 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "emb.tif", "emb_scales.tif", "roi.tiff", "stitched_representation.npy"]


def test_same_input_same_bytes(tmp_path: Path) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path, height=300, width=280, dim=4)
    first = write_embedding_cog(npy, roi_path, tmp_path / "a" / "emb.tif").path.read_bytes()
    second = write_embedding_cog(npy, roi_path, tmp_path / "b" / "emb.tif").path.read_bytes()
    assert first == second


def test_crash_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)

    def broken_copy(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_cog.rasterio.shutil, "copy", broken_copy)
    with pytest.raises(RuntimeError, match="disk full"):
        write_embedding_cog(npy, roi_path, tmp_path / "emb.tif", dtype="int8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roi.tiff", "stitched_representation.npy"]


def test_bad_dtype(tmp_path: Path) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    with pytest.raises(BTFMError, match="--dtype must be float32 or int8, got float16"):
        write_embedding_cog(npy, roi_path, tmp_path / "emb.tif", dtype="float16")
    assert not (tmp_path / "emb.tif").exists()


def test_quantise_and_cosine_stats() -> None:
    vectors = np.array([[[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]]], np.float32)  # (1, 2, 3)
    q, scale = quantise_int8(vectors)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert q[0, 0].tolist() == [0, 0, 0] and scale[0, 0] == 0
    assert q[0, 1].tolist() == [64, -127, 32] and scale[0, 1] == pytest.approx(2 / 127)
    stats = CosineStats()
    stats.update(vectors.reshape(-1, 3), q.reshape(-1, 3), scale.reshape(-1))
    assert stats.count == 1 and 0.9999 < stats.mean <= 1 and stats.minimum == stats.mean
    assert CosineStats().mean == 1.0 and CosineStats().as_dict()["pixels"] == 0
