"""open_embedding, sample_points and btfm-sample on real exports of a small stitched embedding."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from pyproj import Transformer

from btfm_core.errors import InputDataError
from btfm_core.roi import open_roi
from btfm_core.tiles import tile_layout
from btfm_infer import convert_npy2tiff, open_embedding, outputs, sample_cli, sample_points, stitch_tiled_representation
from tests.conftest import write_raster

HEIGHT, WIDTH, DIM = 30, 45, 16
UTM = "EPSG:32631"
#: (row, col) of pixels inside the ROI, and one outside it (the zero corner).
INSIDE = [(10, 10), (0, 44), (29, 0), (29, 44), (22, 31)]
OUTSIDE_ROI = (2, 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A ROI, its stitched map (made by btfm-stitch from tiles) and every export, by the real CLIs."""
    folder = tmp_path_factory.mktemp("outputs")
    mask = np.ones((HEIGHT, WIDTH), np.uint8)
    mask[:5, :7] = 0
    mask[15, :] = 0
    roi = write_raster(folder / "roi.tiff", mask)
    rng = np.random.default_rng(3)
    data = rng.normal(size=(HEIGHT, WIDTH, DIM)).astype(np.float32)
    data[mask == 0] = 0
    data[29, 44] = 0  # inside the ROI, not embedded
    rep = folder / "representation_retiled"
    rep.mkdir()
    for tile in tile_layout(HEIGHT, WIDTH, 20):
        np.save(rep / f"{tile.name}.npy", data[tile.y0:tile.y1, tile.x0:tile.x1])
    assert stitch_tiled_representation.main(["--representation-dir", str(rep), "--roi", str(roi), "--out-dir",
                                             str(folder), "-q"]) == 0
    npy = folder / "stitched_representation.npy"
    common = ["--npy", str(npy), "--ref-tiff", str(roi), "--no-png", "-q"]
    assert convert_npy2tiff.main([*common, "--out", str(folder / "emb.tif"), "--zarr", str(folder / "emb.zarr")]) == 0
    assert convert_npy2tiff.main([*common, "--out", str(folder / "emb8.tif"), "--zarr", str(folder / "emb8.zarr"),
                                  "--dtype", "int8", "--no-stac"]) == 0
    assert convert_npy2tiff.main([*common, "--no-tiff", "--zarr", str(folder / "emb8_v3.zarr"), "--zarr-sharding",
                                  "--dtype", "int8", "--no-stac"]) == 0
    return {"folder": folder, "roi": roi, "mask": mask, "data": data, "npy": npy}


def _expected(exported: dict[str, object]) -> np.ndarray:
    """The stitched values with NaN outside the ROI."""
    data = np.array(exported["data"])
    data[np.asarray(exported["mask"]) == 0] = np.nan
    return data


def _int8(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, C) int8 codes and (H, W) scales of the int8 GeoTIFF, read with rasterio."""
    with rasterio.open(folder / "emb8.tif") as src:
        codes = np.moveaxis(src.read(), 0, -1)
    with rasterio.open(folder / "emb8_scales.tif") as src:
        scales = src.read(1)
    return codes, scales


def _check_grid(array: object, exported: dict[str, object]) -> None:
    grid = open_roi(exported["roi"]).grid
    assert array.dims == ("y", "x", "band") and array.shape == (HEIGHT, WIDTH, DIM)
    assert isinstance(array.data, da.Array)
    assert array.rio.crs == grid.rasterio_crs and array.rio.transform() == grid.transform
    assert list(array["band"].values) == [f"A{i:02d}" for i in range(DIM)]
    x0 = grid.transform.c + 5.0
    assert array["x"].values[0] == x0 and array["y"].values[-1] == grid.transform.f - 10 * HEIGHT + 5.0


def test_float32_cog(exported: dict[str, object]) -> None:
    array = open_embedding(exported["folder"] / "emb.tif")
    _check_grid(array, exported)
    assert array.dtype == np.float32 and np.isnan(array.rio.nodata)
    assert array.attrs["btfm:format"] == "geotiff"
    np.testing.assert_array_equal(array.values, _expected(exported))


def test_int8_cog_dequantised_is_codes_times_scales(exported: dict[str, object]) -> None:
    folder = exported["folder"]
    array = open_embedding(folder / "emb8.tif")
    _check_grid(array, exported)
    codes, scales = _int8(folder)
    expected = codes.astype(np.float32) * scales[..., None]
    outside = np.asarray(exported["mask"]) == 0
    expected[outside] = np.nan
    np.testing.assert_array_equal(array.values, expected)
    assert (codes[outside] == -128).all()
    inside = _expected(exported)[~outside]
    assert np.nanmax(np.abs(array.values[~outside] - inside)) < 0.05  # int8 quantisation error


def test_int8_cog_codes_keep_nodata_and_scales(exported: dict[str, object]) -> None:
    folder = exported["folder"]
    array = open_embedding(folder / "emb8.tif", dequantise=False)
    _check_grid(array, exported)
    codes, scales = _int8(folder)
    assert array.dtype == np.int8 and array.rio.nodata == -128 and array.attrs["_FillValue"] == -128
    assert isinstance(array.coords["scales"].data, da.Array)
    np.testing.assert_array_equal(array.values, codes)
    np.testing.assert_array_equal(array.coords["scales"].values, scales)


def test_npy_with_its_grid_record(exported: dict[str, object], tmp_path: Path) -> None:
    array = open_embedding(exported["npy"])
    _check_grid(array, exported)
    np.testing.assert_array_equal(array.values, _expected(exported))
    # without the ROI beside it, all-zero vectors are taken as outside (the unembedded pixel too)
    shutil.copy(exported["npy"], tmp_path / "map.npy")
    shutil.copy(Path(exported["npy"]).with_suffix(".json"), tmp_path / "map.json")
    bare = open_embedding(tmp_path / "map.npy").values
    expected = _expected(exported)
    expected[29, 44] = np.nan
    np.testing.assert_array_equal(bare, expected)


def test_zarr_stores_equal_the_geotiffs(exported: dict[str, object]) -> None:
    folder = exported["folder"]
    float_zarr = open_embedding(folder / "emb.zarr")
    _check_grid(float_zarr, exported)
    np.testing.assert_array_equal(float_zarr.values, _expected(exported))
    int8_cog = open_embedding(folder / "emb8.tif").values
    for store in ("emb8.zarr", "emb8_v3.zarr"):
        array = open_embedding(folder / store)
        _check_grid(array, exported)
        np.testing.assert_array_equal(array.values, int8_cog)
        codes = open_embedding(folder / store, dequantise=False)
        assert codes.dtype == np.int8 and codes.rio.nodata == -128
        np.testing.assert_array_equal(codes.values, _int8(folder)[0])


def _lonlat(rows_cols: list[tuple[int, int]], offset: float = 0.0) -> np.ndarray:
    """(N, 2) lon/lat of points inside the given pixels (``offset`` m from the centre)."""
    x = np.array([664000 + 10 * c + 5 + offset for _, c in rows_cols])
    y = np.array([5612000 - 10 * r - 5 - offset for r, _ in rows_cols])
    lon, lat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True).transform(x, y)
    return np.column_stack([lon, lat])


def test_sample_lonlat_pairs(exported: dict[str, object]) -> None:
    pixels = [*INSIDE, OUTSIDE_ROI]
    pairs = [tuple(p) for p in _lonlat(pixels, offset=3.0)] + [(0.0, 0.0)]
    table = sample_points(exported["folder"] / "emb.tif", pairs)
    bands = [f"A{i:02d}" for i in range(DIM)]
    assert list(table.columns) == ["lon", "lat", "x", "y", "row", "col", *bands]
    expected = _expected(exported)
    for i, (row, col) in enumerate(pixels):
        assert (table["row"][i], table["col"][i]) == (row, col)
        np.testing.assert_array_equal(table.loc[i, bands].to_numpy(np.float32), expected[row, col])
    assert table.loc[len(pixels) - 1, bands].isna().all()  # outside the ROI: nodata
    assert table.loc[len(pixels), bands].isna().all() and pd.isna(table["row"][len(pixels)])  # off the map
    np.testing.assert_allclose(table["x"][0], 664000 + 10 * 10 + 8, atol=1e-6)
    array = sample_points(exported["folder"] / "emb.tif", _lonlat(INSIDE))  # an (N, 2) array works too
    np.testing.assert_array_equal(array[bands].to_numpy(), table.loc[:len(INSIDE) - 1, bands].to_numpy())


def _write_points(path: Path, xy: np.ndarray, crs: str | None, driver: str) -> Path:
    names = np.array([f"p{i}" for i in range(len(xy))], dtype=object)
    pyogrio.raw.write(path, shapely.to_wkb(shapely.points(xy)), [names, np.arange(len(xy))], ["name", "ident"],
                      geometry_type="Point", crs=crs, driver=driver)
    return path


@pytest.fixture(scope="module")
def point_files(exported: dict[str, object]) -> dict[str, Path]:
    folder = Path(exported["folder"])
    pixels = [*INSIDE, OUTSIDE_ROI]
    lonlat = np.vstack([_lonlat(pixels, offset=-2.0), [[10.0, 45.0]]])
    utm = np.column_stack(Transformer.from_crs("EPSG:4326", UTM, always_xy=True).transform(lonlat[:, 0],
                                                                                            lonlat[:, 1]))
    return {"lonlat": _write_points(folder / "pts_4326.geojson", lonlat, "EPSG:4326", "GeoJSON"),
            "utm": _write_points(folder / "pts_utm.geojson", utm, UTM, "GeoJSON"),
            "gpkg": _write_points(folder / "pts.gpkg", utm, UTM, "GPKG")}


def test_sample_geojson_in_any_crs_gives_the_same_values(exported: dict[str, object],
                                                         point_files: dict[str, Path]) -> None:
    bands = [f"A{i:02d}" for i in range(DIM)]
    tables = {key: sample_points(exported["folder"] / "emb.tif", path) for key, path in point_files.items()}
    first = tables["lonlat"]
    assert list(first.columns[:6]) == ["name", "ident", "x", "y", "row", "col"]
    assert first["name"].tolist() == [f"p{i}" for i in range(len(INSIDE) + 2)]
    expected = _expected(exported)
    for i, (row, col) in enumerate(INSIDE):
        assert (first["row"][i], first["col"][i]) == (row, col)
        np.testing.assert_array_equal(first.loc[i, bands].to_numpy(np.float32), expected[row, col])
    assert first.loc[len(INSIDE):, bands].isna().all().all()  # outside the ROI, and off the map (Italy)
    for other in ("utm", "gpkg"):
        pd.testing.assert_frame_equal(tables[other][bands], first[bands])
        assert tables[other]["row"].tolist() == first["row"].tolist()


@pytest.mark.parametrize("name", ["emb8.tif", "emb.zarr", "emb8.zarr", "stitched_representation.npy"])
def test_sample_every_format(exported: dict[str, object], point_files: dict[str, Path], name: str) -> None:
    bands = [f"A{i:02d}" for i in range(DIM)]
    table = sample_points(exported["folder"] / name, point_files["utm"])
    full = open_embedding(exported["folder"] / name).values
    for i, (row, col) in enumerate(INSIDE):
        np.testing.assert_array_equal(table.loc[i, bands].to_numpy(np.float32), full[row, col])


def test_sample_int8_codes_with_scale_column(exported: dict[str, object]) -> None:
    folder = exported["folder"]
    table = sample_points(folder / "emb8.tif", _lonlat([*INSIDE, OUTSIDE_ROI]), dequantise=False)
    codes, scales = _int8(folder)
    for i, (row, col) in enumerate(INSIDE):
        np.testing.assert_array_equal(table.loc[i, [f"A{b:02d}" for b in range(DIM)]].to_numpy(), codes[row, col])
        assert table["scale"][i] == scales[row, col]
    assert table.iloc[-1][[f"A{b:02d}" for b in range(DIM)]].isna().all()  # -128 reads as NaN


def test_sample_a_geodataframe(exported: dict[str, object]) -> None:
    class FakeGeoDataFrame(pd.DataFrame):  # geopandas is not installed: the duck type sample_points accepts
        crs = UTM

    xy = np.array([[664000 + 10 * c + 5, 5612000 - 10 * r - 5] for r, c in INSIDE])
    frame = FakeGeoDataFrame({"label": list("abcde"), "x": [1, 2, 3, 4, 5], "geometry": shapely.points(xy)})
    table = sample_points(exported["folder"] / "emb.tif", frame)
    assert table["label"].tolist() == list("abcde") and table["input_x"].tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(table["x"].to_numpy(), xy[:, 0])
    assert [tuple(rc) for rc in table[["row", "col"]].to_numpy()] == INSIDE


def test_sampling_reads_only_the_chunks_it_needs(exported: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[tuple[slice, ...]] = []
    original = outputs._NpyWindows.__getitem__

    def counting(self: outputs._NpyWindows, index: tuple[slice, ...]) -> np.ndarray:
        window = original(self, index)
        if window.size:  # dask reads an empty window once to learn the dtype
            reads.append(index)
        return window

    monkeypatch.setattr(outputs._NpyWindows, "__getitem__", counting)
    array = open_embedding(exported["npy"], chunks=10)  # 3 x 5 chunks
    table = sample_points(array, _lonlat([(10, 10), (11, 12)]))
    assert reads == [(slice(10, 20), slice(10, 20), slice(0, DIM))] and table["row"].tolist() == [10, 11]
    reads.clear()
    sample_points(exported["npy"], _lonlat([(10, 10), (11, 12)]))  # a path: read in 32 px windows
    assert reads == [(slice(0, 30), slice(0, 32), slice(0, DIM))]


@pytest.mark.parametrize(("points", "phrase"), [
    ("missing.geojson", "does not exist"),
    ("empty.geojson", "holds no points"),
    ("nocrs.shp", "has no CRS"),
    ("polygons.geojson", "polygon geometries"),
    ("nolonlat.csv", "needs lon and lat columns"),
    ([(700000.0, 5600000.0)], "not longitude/latitude"),
    ([], "no points given"),
    ("notvector.txt", "not a vector file"),
])
def test_bad_points_are_named(exported: dict[str, object], tmp_path: Path, points: object, phrase: str) -> None:
    (tmp_path / "empty.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        _write_points(tmp_path / "nocrs.shp", np.array([[664100.0, 5611900.0]]), None, "ESRI Shapefile")
    polygon = shapely.box(664100, 5611800, 664200, 5611900)
    pyogrio.raw.write(tmp_path / "polygons.geojson", shapely.to_wkb(np.array([polygon])), [np.array([1])], ["id"],
                      geometry_type="Polygon", crs="EPSG:32631", driver="GeoJSON")
    (tmp_path / "nolonlat.csv").write_text("a,b\n1,2\n")
    (tmp_path / "notvector.txt").write_text("hello")
    source = tmp_path / points if isinstance(points, str) else points
    with pytest.raises(InputDataError, match=phrase):
        sample_points(exported["folder"] / "emb.tif", source)


def test_bad_embeddings_are_named(exported: dict[str, object], tmp_path: Path) -> None:
    shutil.copy(exported["npy"], tmp_path / "alone.npy")
    shutil.copy(exported["folder"] / "emb8.tif", tmp_path / "emb8.tif")
    cases = {tmp_path / "nope.tif": "does not exist", tmp_path / "alone.npy": "no grid record alone.json",
             tmp_path / "emb8.tif": "scales emb8_scales.tif are not beside it", exported["roi"]: "uint8 pixels",
             exported["folder"] / "emb8_scales.tif": "holds the scales", tmp_path: "not a Zarr store",
             exported["folder"] / "emb.stac.json": "unknown file type .json"}
    for path, phrase in cases.items():
        with pytest.raises(InputDataError, match=phrase):
            open_embedding(path)


def test_sample_cli_writes_parquet_and_csv(exported: dict[str, object], point_files: dict[str, Path],
                                           tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    emb = str(exported["folder"] / "emb.tif")
    parquet, csv = tmp_path / "table.parquet", tmp_path / "table.csv"
    assert sample_cli.main(["--embeddings", emb, "--points", str(point_files["gpkg"]), "--out", str(parquet),
                            "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(parquet)
    expected = sample_points(emb, point_files["gpkg"])
    pd.testing.assert_frame_equal(pd.read_parquet(parquet), expected)
    lon, lat = _lonlat([INSIDE[0]])[0]
    assert sample_cli.main(["--embeddings", emb, "--lonlat", f"{lon},{lat}", "--lonlat", "0,0", "--out", str(csv),
                            "-q"]) == 0
    table = pd.read_csv(csv)
    assert len(table) == 2 and table["row"][0] == INSIDE[0][0] and np.isnan(table["A00"][1])
    np.testing.assert_allclose(table.loc[0, "A00":].to_numpy(np.float32), _expected(exported)[INSIDE[0]], rtol=1e-6)
    assert sample_cli.main(["--embeddings", emb, "--lonlat", "0,0", "--out", str(csv), "-q"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert sample_cli.main(["--embeddings", emb, "--lonlat", "0,0", "--out", str(tmp_path / "t.xlsx"), "-q"]) == 2
    assert "must end in .parquet or .csv" in capsys.readouterr().err
    assert sample_cli.main(["--embeddings", emb, "--points", str(tmp_path / "x.gpkg"), "--out", str(csv),
                            "--overwrite", "-q"]) == 2
    err = capsys.readouterr().err
    assert "points file" in err and "does not exist" in err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "btfm-sample"
    if not script.exists():
        pytest.skip("btfm-sample not installed (pip install -e .)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True)
    assert "--embeddings" in result.stdout and "--lonlat" in result.stdout
