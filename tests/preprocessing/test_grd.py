"""Local GRD processing: calibration, noise removal, GCP geocoding, blocks, zip, errors."""

from __future__ import annotations

import datetime as dt
import shutil
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_coords

from btfm_core.errors import InputDataError, SourceError
from btfm_core.grid import Grid
from btfm_preprocessing import grd
from btfm_preprocessing.grd import (
    LutGrid,
    NoiseModel,
    calibrate,
    geocode_grd,
    parse_calibration,
    parse_noise,
    read_grd_metadata,
)

DATA = Path(__file__).parents[1] / "data" / "s1_grd"
SAFE = DATA / "S1A_IW_GRDH_1SDV_20210809T173953_20210809T174018_039156_049F13_6FF8.SAFE"
CAL_VV = SAFE / "annotation/calibration/calibration-s1a-iw-grd-vv-20210809t173953-20210809t174018-039156-049f13-001.xml"
NOISE_VV = SAFE / "annotation/calibration/noise-s1a-iw-grd-vv-20210809t173953-20210809t174018-039156-049f13-001.xml"
MEAS_VV = SAFE / "measurement/s1a-iw-grd-vv-20210809t173953-20210809t174018-039156-049f13-001.tiff"
UTM43N = CRS.from_epsg(32643).to_wkt()


def utm_grid(res: float, lon0: float = 75.6, lat1: float = 11.2, lon1: float = 78.2, lat0: float = 9.2) -> Grid:
    """A north-up UTM 43N grid over a lon/lat box (the pixels' real location, south India)."""
    xs, ys = transform_coords("EPSG:4326", "EPSG:32643", [lon0, lon1], [lat0, lat1])
    return Grid(UTM43N, Affine(res, 0, xs[0], 0, -res, ys[1]), int((ys[1] - ys[0]) / res),
                int((xs[1] - xs[0]) / res))


def zip_safe(src: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(src.rglob("*")):
            archive.write(path, f"{src.name}/{path.relative_to(src).as_posix()}")
    return target


# ------------------------------------------------------------------ metadata


def test_metadata_from_manifest_only() -> None:
    meta = read_grd_metadata(SAFE)
    assert meta.mission == "S1A" and meta.mode == "IW" and meta.product_type == "GRD"
    assert meta.orbit_direction == "ascending"
    assert meta.start == dt.datetime(2021, 8, 9, 17, 39, 53, 153776, tzinfo=dt.timezone.utc)
    assert meta.polarisations == ("VV", "VH")
    assert meta.footprint[0] == meta.footprint[-1] and meta.footprint[0] == (1.512143, 46.03389)
    assert meta.ipf_version == "003.31" and meta.relative_orbit == 59
    assert read_grd_metadata(SAFE / "manifest.safe") == meta


# ------------------------------------------------------------------ calibration and noise (pure)


def test_calibration_is_dn_squared_over_a_squared_at_nodes_and_bilinear_between() -> None:
    lut = parse_calibration(ET.parse(CAL_VV).getroot())
    assert len(lut.lines) == 2 and len(lut.pixels[0]) == 655
    px, a0 = lut.pixels[0], lut.values[0]
    # at LUT nodes: sigma0 = DN^2 / A^2 exactly (no noise)
    j = 100
    col = round(px[j])
    dn = np.full((1, 3), 200, dtype=np.uint16)
    # node pixel positions are fractional after rescaling: sample exactly at a node via LutGrid
    assert lut.sample(np.array([0.0]), np.array([px[j]]))[0, 0] == pytest.approx(a0[j])
    out = calibrate(dn, 0, col, lut, None)
    expected = 200.0**2 / lut.sample(np.array([0.0]), np.arange(col, col + 3, dtype=float)) ** 2
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    # between two pixel nodes: linear interpolation of A
    mid = (px[j] + px[j + 1]) / 2
    assert lut.sample(np.array([0.0]), np.array([mid]))[0, 0] == pytest.approx((a0[j] + a0[j + 1]) / 2)


def test_lut_bilinear_over_lines_and_pixels() -> None:
    lut = LutGrid(np.array([0.0, 10.0]), (np.array([0.0, 10.0]), np.array([0.0, 10.0])),
                  (np.array([100.0, 200.0]), np.array([300.0, 400.0])))
    got = lut.sample(np.array([0.0, 5.0, 10.0, 20.0]), np.array([0.0, 5.0, 10.0]))
    np.testing.assert_allclose(got, [[100, 150, 200], [200, 250, 300], [300, 350, 400], [300, 350, 400]])
    dn = np.array([[0, 10]], dtype=np.uint16)
    sigma = calibrate(dn, 5, 5, lut)
    assert np.isnan(sigma[0, 0]) and sigma[0, 1] == pytest.approx(100 / 260.0**2)


def test_noise_removal_uses_range_times_azimuth_and_floors_negatives() -> None:
    noise = parse_noise(ET.parse(NOISE_VV).getroot())
    assert len(noise.range_lut.lines) == 2 and len(noise.azimuth) == 1
    block = noise.azimuth[0]
    rows, cols = np.array([block.lines[40]]), np.array([1.0, block.last_pixel + 1])
    got = noise.sample(rows, cols)
    rng = noise.range_lut.sample(rows, cols)
    assert got[0, 0] == pytest.approx(rng[0, 0] * block.values[40])  # IW1: range x azimuth
    assert got[0, 1] == pytest.approx(rng[0, 1])  # outside the azimuth block: range only
    cal = LutGrid(np.array([0.0]), (np.array([0.0, 1e4]),), (np.array([500.0, 500.0]),))
    flat = NoiseModel(LutGrid(np.array([0.0]), (np.array([0.0, 1e4]),), (np.array([1000.0, 1000.0]),)))
    sigma = calibrate(np.array([[10, 100, 0]], dtype=np.uint16), 0, 0, cal, flat)
    assert sigma[0, 0] == grd.NOISE_FLOOR  # 100 - 1000 < 0
    assert sigma[0, 1] == pytest.approx((100**2 - 1000) / 500.0**2)
    assert np.isnan(sigma[0, 2])


def test_legacy_noise_vector_list_is_read() -> None:
    xml = ET.fromstring("<noise><noiseVectorList count='1'><noiseVector><line>0</line>"
                        "<pixel count='2'>0 10</pixel><noiseLut count='2'>5 15</noiseLut></noiseVector>"
                        "</noiseVectorList></noise>")
    model = parse_noise(xml)
    assert model.azimuth == () and model.sample(np.array([3.0]), np.array([5.0]))[0, 0] == pytest.approx(10)


# ------------------------------------------------------------------ geocoding


def test_geocode_writes_float32_sigma0_on_the_grid(tmp_path: Path) -> None:
    grid = utm_grid(800.0)
    result = geocode_grd(SAFE, grid, tmp_path / "out.tif", block=128)
    assert result.path == tmp_path / "out.tif" and result.orbit_direction == "ascending"
    assert result.acquired.year == 2021 and "not terrain-corrected" in result.backscatter
    assert 0.5 < result.coverage < 0.9
    with rasterio.open(result.path) as ds:
        assert ds.count == 2 and ds.dtypes == ("float32", "float32")
        assert ds.descriptions == ("VV", "VH")
        assert Grid.from_dataset(ds) == grid
        data = ds.read()
    db = 10 * np.log10(np.nanmedian(data, axis=(1, 2)))
    assert -12 < db[0] < -5 and -20 < db[1] < -12  # plausible land VV / VH
    assert np.isfinite(data).any(axis=0).mean() == pytest.approx(result.coverage)


def test_gcp_pixel_lands_at_gcp_lonlat(tmp_path: Path) -> None:
    """A bright spot at a GCP's sample is geocoded to the GCP's lon/lat (within a source pixel)."""
    safe = tmp_path / SAFE.name
    shutil.copytree(SAFE, safe)
    meas = safe / MEAS_VV.relative_to(SAFE)
    with rasterio.open(meas, "r+") as ds:
        gcp = next(g for g in ds.gcps[0] if 100 < g.row < 300 and 200 < g.col < 400)
        dn = np.full((ds.height, ds.width), 30, dtype=np.uint16)
        r, c = round(gcp.row), round(gcp.col)
        dn[r, c] = 20000
        ds.write(dn, 1)
        offset = (r - gcp.row, c - gcp.col)
    assert max(abs(v) for v in offset) <= 0.5
    gx, gy = transform_coords("EPSG:4326", "EPSG:32643", [gcp.x], [gcp.y])
    res = 50.0
    grid = Grid(UTM43N, Affine(res, 0, gx[0] - 2000, 0, -res, gy[0] + 2000), 80, 80)
    out = geocode_grd(safe, grid, tmp_path / "spot.tif", polarisations=("VV",), block=64)
    with rasterio.open(out.path) as ds:
        vv = ds.read(1)
    weights = np.where(vv > 0.01, vv, 0)
    rows, cols = np.indices(vv.shape)
    cy, cx = (weights * rows).sum() / weights.sum(), (weights * cols).sum() / weights.sum()
    x, y = grid.transform @ (cx + 0.5, cy + 0.5)
    pixel_m = 390.0  # fixture sample spacing (~250 km swath / 640 samples)
    assert abs(x - gx[0]) < pixel_m and abs(y - gy[0]) < pixel_m


def test_blocks_give_the_same_result_as_one_block(tmp_path: Path) -> None:
    grid = utm_grid(400.0, 76.0, 10.9, 77.6, 9.6)
    small = geocode_grd(SAFE, grid, tmp_path / "small.tif", block=48)
    large = geocode_grd(SAFE, grid, tmp_path / "large.tif", block=1024)
    with rasterio.open(small.path) as a, rasterio.open(large.path) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    assert small.coverage == large.coverage > 0


def test_zip_and_folder_give_identical_results(tmp_path: Path) -> None:
    archive = zip_safe(SAFE, tmp_path / f"{SAFE.stem}.zip")
    grid = utm_grid(1600.0)
    a = geocode_grd(SAFE, grid, tmp_path / "folder.tif", block=64)
    b = geocode_grd(archive, grid, tmp_path / "zip.tif", block=64)
    with rasterio.open(a.path) as x, rasterio.open(b.path) as y:
        np.testing.assert_array_equal(x.read(), y.read())
    assert read_grd_metadata(archive) == read_grd_metadata(SAFE)


def test_no_overlap_gives_zero_coverage(tmp_path: Path) -> None:
    grid = Grid(CRS.from_epsg(32631).to_wkt(), Affine(100, 0, 500000, 0, -100, 5000000), 20, 30)  # France
    result = geocode_grd(SAFE, grid, tmp_path / "none.tif", block=16)
    assert result.coverage == 0.0
    with rasterio.open(result.path) as ds:
        assert np.isnan(ds.read()).all()


def test_failure_leaves_no_partial_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = grd.calibrate

    def failing(*args: object, **kwargs: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError("disk vanished")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(grd, "calibrate", failing)
    out = tmp_path / "out.tif"
    with pytest.raises(OSError, match="disk vanished"):
        geocode_grd(SAFE, utm_grid(800.0), out, block=64)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ bad inputs


def test_missing_polarisation(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="not HH"):
        geocode_grd(SAFE, utm_grid(1600.0), tmp_path / "x.tif", polarisations=("HH",))


def test_missing_measurement_file(tmp_path: Path) -> None:
    safe = tmp_path / SAFE.name
    shutil.copytree(SAFE, safe)
    (safe / MEAS_VV.relative_to(SAFE)).unlink()
    with pytest.raises(InputDataError, match="no VV measurement"):
        geocode_grd(safe, utm_grid(1600.0), tmp_path / "x.tif")


def test_not_a_grd(tmp_path: Path) -> None:
    safe = tmp_path / "S1A_IW_SLC__1SDV_X.SAFE"
    shutil.copytree(SAFE, safe)
    manifest = safe / "manifest.safe"
    manifest.write_text(manifest.read_text().replace(">GRD<", ">SLC<"))
    with pytest.raises(InputDataError, match="SLC product, not a GRD"):
        read_grd_metadata(safe)
    with pytest.raises(InputDataError, match="not a Sentinel-1 SAFE"):
        read_grd_metadata(tmp_path)  # no manifest.safe
    with pytest.raises(InputDataError, match="does not exist"):
        read_grd_metadata(tmp_path / "missing.zip")


def test_corrupt_zip(tmp_path: Path) -> None:
    archive = zip_safe(SAFE, tmp_path / "p.zip")
    data = archive.read_bytes()
    (tmp_path / "truncated.zip").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="not a readable zip"):
        read_grd_metadata(tmp_path / "truncated.zip")
    garbled = bytearray(data)
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(f"{SAFE.name}/manifest.safe")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    garbled[start:start + 64] = b"\x00" * 64
    (tmp_path / "garbled.zip").write_bytes(bytes(garbled))
    with pytest.raises(SourceError, match="corrupt"):
        read_grd_metadata(tmp_path / "garbled.zip")


def test_block_must_be_multiple_of_16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        geocode_grd(SAFE, utm_grid(1600.0), tmp_path / "x.tif", block=100)
