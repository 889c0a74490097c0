"""Tests of btfm_preprocessing.convert_shp_to_tiff (vector polygons -> ROI GeoTIFF)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely

from btfm_core.errors import InvalidROIError
from btfm_core.roi import open_roi
from btfm_preprocessing import convert_shp_to_tiff as conv

SCRIPT = Path(conv.__file__)


def square(lon: float, lat: float, half: float = 0.01) -> shapely.Polygon:
    """A small lon/lat square centred on (lon, lat)."""
    return shapely.box(lon - half, lat - half, lon + half, lat + half)


def write_geojson(path: Path, geoms: list[shapely.Geometry]) -> Path:
    """Write a GeoJSON FeatureCollection by hand (WGS84 by definition)."""
    features = [{"type": "Feature", "properties": {"id": i}, "geometry": json.loads(shapely.to_geojson(g))}
                for i, g in enumerate(geoms)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_vector(path: Path, geoms: list[shapely.Geometry], crs: str | None, driver: str,
                 geometry_type: str = "Polygon") -> Path:
    """Write polygons with pyogrio (shapefile or GPKG)."""
    wkb = np.array([shapely.to_wkb(g) for g in geoms], dtype=object)
    kwargs = {"crs": crs} if crs else {}
    pyogrio.raw.write(path, geometry=wkb, field_data=[np.arange(len(geoms), dtype=np.int32)], fields=["id"],
                      geometry_type=geometry_type, driver=driver, **kwargs)
    return path


def output_epsg(path: Path) -> int:
    with rasterio.open(path) as src:
        return src.crs.to_epsg()


@pytest.mark.parametrize(("lon", "lat", "epsg"), [
    (4.7, 50.8, 32631),      # Belgium
    (-74.0, 40.7, 32618),    # New York
    (18.4, -33.9, 32734),    # Cape Town, south
    (5.0, 60.0, 32632),      # Norway exception (would be 31)
    (2.0, 60.0, 32631),      # west of the Norway exception
    (15.0, 78.0, 32633),     # Svalbard
    (5.0, 78.0, 32631),
    (25.0, 78.0, 32635),
    (40.0, 78.0, 32637),
    (179.9, 10.0, 32660),
    (180.0, 10.0, 32660),
    (-180.0, -10.0, 32701),
])
def test_utm_epsg_for(lon: float, lat: float, epsg: int) -> None:
    assert conv.utm_epsg_for(lon, lat) == epsg


def pixel_shape(path: Path) -> shapely.Geometry:
    """Union of the non-zero pixels of a raster, vectorised in its CRS."""
    with rasterio.open(path) as src:
        data = src.read(1)
        polys = [shapely.geometry.shape(geom) for geom, _ in
                 rasterio.features.shapes(data, mask=data != 0, transform=src.transform)]
    return shapely.union_all(polys)


ROUND_TRIP_POLY = shapely.Polygon([(664003, 5611007), (665517, 5611203), (665890, 5612488),
                                   (664702, 5612911), (664121, 5612305)])


def test_round_trip_utm_polygon(tmp_path: Path) -> None:
    # An irregular polygon in UTM 31N; the burned area must be within one perimeter band of it.
    poly = ROUND_TRIP_POLY
    shp = write_vector(tmp_path / "roi.shp", [poly], "EPSG:32631", "ESRI Shapefile")
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(shp), "--out", str(out)]) == 0
    with rasterio.open(out) as src:
        data = src.read(1)
        assert src.crs.to_epsg() == 32631
        assert src.dtypes[0] == "uint8" and src.count == 1
        assert src.res == (10.0, 10.0)
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name.lower() == "deflate"
        t = src.transform
    assert t.c % 10 == 0 and t.f % 10 == 0
    assert t.c <= 664003 and t.f >= 5612911
    burned = np.count_nonzero(data) * 100.0
    assert abs(burned - poly.area) <= poly.length * 10
    assert set(np.unique(data)) == {0, 1}
    # Pixel centres inside: the pixels' outline and the polygon differ by less than a pixel diagonal.
    pixels = pixel_shape(out)
    assert pixels.buffer(10 * 2**0.5).covers(poly)
    assert poly.buffer(10 * 2**0.5).covers(pixels)


def test_round_trip_all_touched_covers_polygon(tmp_path: Path) -> None:
    shp = write_vector(tmp_path / "roi.shp", [ROUND_TRIP_POLY], "EPSG:32631", "ESRI Shapefile")
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(shp), "--out", str(out), "--all-touched", "-q"]) == 0
    pixels = pixel_shape(out)
    assert pixels.covers(ROUND_TRIP_POLY)
    assert ROUND_TRIP_POLY.buffer(10 * 2**0.5).covers(pixels)


def test_wgs84_geojson_picks_utm_31(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(4.7, 50.8)])
    out = tmp_path / "sub" / "roi.tiff"
    assert conv.main(["--shapefile", str(src), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert output_epsg(out) == 32631
    roi = open_roi(out)
    assert roi.inside_pixels > 0
    left, bottom, right, top = roi.grid.bounds
    assert all(v % 10 == 0 for v in (left, bottom, right, top))
    # ~1.4 km x 2.2 km square
    assert 2.5e6 < roi.inside_pixels * 100 < 3.5e6


@pytest.mark.parametrize(("lon", "lat", "epsg"), [(18.4, -33.9, 32734), (5.0, 60.0, 32632),
                                                   (15.0, 78.0, 32633)])
def test_zone_selection_end_to_end(tmp_path: Path, lon: float, lat: float, epsg: int) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(lon, lat)])
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(src), "--out", str(out), "-q"]) == 0
    assert output_epsg(out) == epsg
    open_roi(out)


@pytest.mark.parametrize(("name", "driver"), [("roi.shp", "ESRI Shapefile"), ("roi.gpkg", "GPKG")])
def test_shapefile_and_gpkg(tmp_path: Path, name: str, driver: str) -> None:
    vec = write_vector(tmp_path / name, [square(4.70, 50.80), square(4.75, 50.82)], "EPSG:4326", driver)
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(vec), "--out", str(out), "--burn-value", "7"]) == 0
    with rasterio.open(out) as src:
        data = src.read(1)
        assert src.crs.to_epsg() == 32631
        assert src.transform.c % 10 == 0 and src.transform.f % 10 == 0
    assert set(np.unique(data)) == {0, 7}
    assert open_roi(out).inside_pixels == np.count_nonzero(data)


def test_gpkg_layer_and_epsg_override(tmp_path: Path) -> None:
    vec = tmp_path / "multi.gpkg"
    wkb = np.array([shapely.to_wkb(square(4.7, 50.8))], dtype=object)
    pyogrio.raw.write(vec, geometry=wkb, field_data=[np.array([1])], fields=["id"], crs="EPSG:4326",
                      geometry_type="Polygon", driver="GPKG", layer="fields")
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(vec), "--layer", "fields", "--out", str(out),
                      "--epsg", "3035", "--all-touched"]) == 0
    assert output_epsg(out) == 3035
    assert conv.main(["--shapefile", str(vec), "--layer", "nope", "--out", str(out), "--overwrite"]) == 2


def test_epsg_not_in_metres_rejected(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(-73.9, 40.7)])
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(src), "--out", str(out), "--epsg", "2263"]) == 2  # US feet
    assert "needs metres" in caplog.text
    assert conv.main(["--shapefile", str(src), "--out", str(out), "--epsg", "4326"]) == 2
    assert "not a projected CRS" in caplog.text
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:'crs' was not provided:UserWarning")
def test_no_crs_lonlat_assumed_wgs84(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    shp = write_vector(tmp_path / "roi.shp", [square(4.7, 50.8)], None, "ESRI Shapefile")
    (tmp_path / "roi.prj").unlink(missing_ok=True)
    out = tmp_path / "roi.tiff"
    with caplog.at_level(logging.WARNING):
        assert conv.main(["--shapefile", str(shp), "--out", str(out)]) == 0
    assert "assuming WGS84" in caplog.text
    assert output_epsg(out) == 32631


@pytest.mark.filterwarnings("ignore:'crs' was not provided:UserWarning")
def test_no_crs_projected_coordinates_rejected(tmp_path: Path) -> None:
    shp = write_vector(tmp_path / "roi.shp", [shapely.box(664000, 5611000, 665000, 5612000)], None,
                       "ESRI Shapefile")
    (tmp_path / "roi.prj").unlink(missing_ok=True)
    with pytest.raises(InvalidROIError, match="no CRS"):
        conv.read_polygons(shp)


def test_resolution_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(4.7, 50.8)])
    out = tmp_path / "roi.tiff"
    with caplog.at_level(logging.WARNING):
        assert conv.main(["--shapefile", str(src), "--out", str(out), "--resolution", "20"]) == 0
    assert "needs a 10 m ROI" in caplog.text
    with rasterio.open(out) as src_ds:
        assert src_ds.res == (20.0, 20.0)
        assert src_ds.transform.c % 20 == 0


@pytest.mark.parametrize("resolution", ["0", "-5", "nan"])
def test_bad_resolution(tmp_path: Path, caplog: pytest.LogCaptureFixture, resolution: str) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(4.7, 50.8)])
    assert conv.main(["--shapefile", str(src), "--out", str(tmp_path / "r.tiff"), "--resolution", resolution]) == 2
    assert "--resolution must be a positive number" in caplog.text
    assert "needs a 10 m ROI" not in caplog.text


def test_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = conv.main(["--shapefile", str(tmp_path / "nope.shp"), "--out", str(tmp_path / "roi.tiff")])
    assert code == 2
    assert "does not exist" in caplog.text
    assert not (tmp_path / "roi.tiff").exists()


def test_points_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vec = write_vector(tmp_path / "pts.gpkg", [shapely.Point(4.7, 50.8), shapely.Point(4.8, 50.9)],
                       "EPSG:4326", "GPKG", geometry_type="Point")
    out = tmp_path / "roi.tiff"
    assert conv.main(["--shapefile", str(vec), "--out", str(out)]) == 2
    assert "expected polygons" in caplog.text
    assert "Point" in caplog.text
    assert not out.exists()


def test_empty_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_geojson(tmp_path / "empty.geojson", [])
    assert conv.main(["--shapefile", str(src), "--out", str(tmp_path / "roi.tiff")]) == 2
    assert "expected polygons" in caplog.text


def test_unreadable_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("this is not json")
    assert conv.main(["--shapefile", str(bad), "--out", str(tmp_path / "roi.tiff")]) == 2
    assert "cannot read vector file" in caplog.text


def test_existing_output_needs_overwrite(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(4.7, 50.8)])
    out = tmp_path / "roi.tiff"
    out.write_bytes(b"old")
    assert conv.main(["--shapefile", str(src), "--out", str(out)]) == 2
    assert "exists; pass --overwrite" in caplog.text
    assert out.read_bytes() == b"old"
    assert conv.main(["--shapefile", str(src), "--out", str(out), "--overwrite"]) == 0
    open_roi(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_bad_burn_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_geojson(tmp_path / "roi.geojson", [square(4.7, 50.8)])
    assert conv.main(["--shapefile", str(src), "--out", str(tmp_path / "r.tiff"), "--burn-value", "0"]) == 2
    assert "--burn-value" in caplog.text


def test_tiny_polygon_needs_all_touched(tmp_path: Path) -> None:
    tiny = shapely.box(664001, 5611001, 664003, 5611003)
    grid, geom = conv.roi_grid_for(tiny, "EPSG:32631", 10.0, None)
    assert grid.shape == (1, 1)
    with pytest.raises(InvalidROIError, match="--all-touched"):
        conv.rasterize_roi(geom, grid)
    assert conv.rasterize_roi(geom, grid, 3, all_touched=True).tolist() == [[3]]


def test_help_as_script() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True,
                            check=False, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--shapefile" in result.stdout and "examples:" in result.stdout
