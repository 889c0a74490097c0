"""GeoTIFF export and quick-look PNG of a stitched embedding."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from btfm_core.errors import InputDataError
from btfm_core.roi import open_roi
from btfm_infer import convert_npy2tiff as convert
from btfm_infer.quicklook import fit_pca, quicklook_stride, robust_stretch, write_quicklook_png
from tests.conftest import REPO_ROOT, write_raster

HEIGHT, WIDTH, DIM = 23, 37, 128


def make_inputs(folder: Path, height: int = HEIGHT, width: int = WIDTH, dim: int = DIM,
                seed: int = 1) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """ROI GeoTIFF (zero corner and a zero strip) and a stitched embedding, zero outside the ROI.

    One ROI pixel has an all-zero embedding (not embedded).
    """
    mask = np.ones((height, width), np.uint8)
    mask[:5, :7] = 0
    mask[height // 2, :] = 0
    roi = write_raster(folder / "roi.tiff", mask)
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(height, width, dim)).astype(np.float32)
    data[mask == 0] = 0
    data[-1, -1] = 0
    npy = folder / "stitched_representation.npy"
    np.save(npy, data)
    return roi, npy, mask, data


def read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            assert src.driver == "PNG"
            return src.read()


def test_geotiff_matches_roi_and_npy(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path)
    out = convert.write_embedding_geotiff(npy, open_roi(roi_path), tmp_path / "emb.tif")
    with rasterio.open(roi_path) as ref, rasterio.open(out) as src:
        assert src.crs == ref.crs and src.transform == ref.transform
        assert (src.height, src.width, src.count) == (HEIGHT, WIDTH, DIM)
        assert set(src.dtypes) == {"float32"}
        assert np.isnan(src.nodata)
        assert src.descriptions[0] == "A00" and src.descriptions[-1] == "A127"
        assert src.compression.name.lower() == "deflate"
        assert src.interleaving.name.lower() == "pixel"
        assert src.block_shapes[0] == (256, 256)
        values = src.read()
    inside = mask != 0
    np.testing.assert_array_equal(np.moveaxis(values, 0, -1)[inside], data[inside])
    assert np.isnan(values[:, ~inside]).all()
    assert not any(p.name.startswith(".tmp-") or p.suffix == ".xml" for p in tmp_path.iterdir())


def test_geotiff_several_blocks(tmp_path: Path) -> None:
    roi_path, npy, mask, data = make_inputs(tmp_path, height=300, width=520, dim=3)
    np.save(npy, data.astype(np.float64))  # any float dtype is accepted, written as float32
    out = convert.write_embedding_geotiff(npy, roi_path, tmp_path / "emb.tif")
    with rasterio.open(out) as src:
        values = np.moveaxis(src.read(), 0, -1)
        assert src.descriptions == ("A00", "A01", "A02")
    inside = mask != 0
    np.testing.assert_array_equal(values[inside], data[inside])
    assert np.isnan(values[~inside]).all()


def test_shape_mismatch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, _, data = make_inputs(tmp_path)
    np.save(npy, data[:20])
    with pytest.raises(InputDataError, match=r"shape \(20, 37, 128\) but the ROI .* is \(23, 37\)"):
        convert.write_embedding_geotiff(npy, roi_path, tmp_path / "emb.tif")
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "-q"]) == 2
    assert "(20, 37, 128)" in caplog.text and "(23, 37)" in caplog.text
    assert not (tmp_path / "stitched_representation.tif").exists()


@pytest.mark.parametrize(("array", "phrase"), [
    (np.zeros((HEIGHT, WIDTH, DIM), np.int16), "dtype int16, expected floating point"),
    (np.zeros((HEIGHT, WIDTH), np.float32), "expected (H, W, C)"),
])
def test_bad_arrays(tmp_path: Path, array: np.ndarray, phrase: str) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    np.save(npy, array)
    with pytest.raises(InputDataError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        convert.write_embedding_geotiff(npy, roi_path, tmp_path / "emb.tif")


def test_unreadable_npy(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    npy.write_bytes(npy.read_bytes()[:1000])
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "-q"]) == 2
    assert "not a readable .npy" in caplog.text and str(npy) in caplog.text
    assert convert.main(["--npy", str(tmp_path / "nope.npy"), "--ref-tiff", str(roi_path), "-q"]) == 2
    assert "does not exist" in caplog.text


def test_cli_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "-q"]) == 0
    tif, png = tmp_path / "stitched_representation.tif", tmp_path / "stitched_representation.png"
    stac = tmp_path / "stitched_representation.stac.json"
    assert capsys.readouterr().out.split() == [str(tif), str(png), str(stac)]
    assert tif.is_file() and png.is_file() and stac.is_file() and (tmp_path / "logs" / "npy2tiff.log").is_file()
    assert "no run metadata with the observation period" in caplog.text
    stamps = {path: path.stat().st_mtime_ns for path in (tif, png, stac)}
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "-q"]) == 0  # complete set: nothing to do
    assert "nothing to do" in caplog.text and {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert capsys.readouterr().out.split() == [str(tif), str(png), str(stac)]
    assert convert.main(["--npy", str(npy), "--ref-tiff", str(roi_path), "-q", "--seed", "1"]) == 2  # other PNG
    assert "png already exists; pass --overwrite" in caplog.text and "--png" in caplog.text
    assert convert.main(["--npy", str(npy), "--roi", str(roi_path), "-q", "--overwrite", "--no-png", "--no-stac",
                         "--out", str(tmp_path / "b.tif")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "b.tif")]
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "b.stac.json").exists()


def test_rerun_completes_a_partial_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An export killed after its GeoTIFF: the rerun (no --overwrite) keeps it and writes the rest."""
    roi_path, npy, _, _ = make_inputs(tmp_path)
    args = ["--npy", str(npy), "--ref-tiff", str(roi_path), "--dtype", "int8", "-q"]
    assert convert.main(args) == 0
    names = ["stitched_representation.tif", "stitched_representation_scales.tif", "stitched_representation.png",
             "stitched_representation.stac.json"]
    complete = {name: (tmp_path / name).read_bytes() for name in names}
    (tmp_path / names[2]).unlink()
    (tmp_path / names[3]).unlink()
    (tmp_path / ".tmp-stitched_representation.png.999.abcdef12").write_bytes(b"half")  # a killed write
    tif_stamp = (tmp_path / names[0]).stat().st_mtime_ns
    capsys.readouterr()
    assert convert.main(args) == 0
    assert (tmp_path / names[0]).stat().st_mtime_ns == tif_stamp
    assert {name: (tmp_path / name).read_bytes() for name in names} == complete
    assert not list(tmp_path.glob(".tmp-*"))


def test_png_alpha_and_colours(tmp_path: Path) -> None:
    roi_path, npy, mask, _ = make_inputs(tmp_path)
    rgba = read_png(write_quicklook_png(npy, roi_path, tmp_path / "q.png"))
    assert rgba.shape == (4, HEIGHT, WIDTH) and rgba.dtype == np.uint8
    valid = mask != 0
    valid[-1, -1] = False  # all-zero embedding
    np.testing.assert_array_equal(rgba[3], np.where(valid, 255, 0))
    assert (rgba[:3, ~valid] == 0).all()
    for band in rgba[:3]:  # stretched to the full range
        assert band[valid].min() == 0 and band[valid].max() == 255


def test_png_size_capped(tmp_path: Path) -> None:
    roi_path, npy, mask, _ = make_inputs(tmp_path)
    assert quicklook_stride(HEIGHT, WIDTH, 10) == 4
    rgba = read_png(write_quicklook_png(npy, roi_path, tmp_path / "q.png", max_size=10))
    assert rgba.shape == (4, 6, 10)
    np.testing.assert_array_equal(rgba[3], np.where(mask[::4, ::4] != 0, 255, 0))


def test_png_deterministic(tmp_path: Path) -> None:
    roi_path, npy, _, _ = make_inputs(tmp_path)
    first = write_quicklook_png(npy, roi_path, tmp_path / "a.png", seed=3).read_bytes()
    second = write_quicklook_png(npy, roi_path, tmp_path / "b.png", seed=3).read_bytes()
    assert first == second
    assert not any(p.suffix == ".xml" or p.name.startswith(".tmp-") for p in tmp_path.iterdir())


def test_png_without_embedded_pixels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    roi_path, npy, _, data = make_inputs(tmp_path)
    np.save(npy, np.zeros_like(data))
    rgba = read_png(write_quicklook_png(npy, roi_path, tmp_path / "q.png"))
    assert not rgba.any()
    assert "transparent" in caplog.text


def test_fit_pca_recovers_principal_direction() -> None:
    rng = np.random.default_rng(0)
    direction = np.array([0.6, -0.8, 0.0, 0.0])
    second = np.array([0.0, 0.0, 1.0, 0.0])
    samples = (rng.normal(size=(5000, 1)) * 10 * direction + rng.normal(size=(5000, 1)) * 3 * second
               + rng.normal(size=(5000, 4)) * 0.1 + np.array([1.0, 2.0, 3.0, 4.0]))
    mean, components = fit_pca(samples, n=2)
    np.testing.assert_allclose(mean, [1, 2, 3, 4], atol=0.5)
    assert components.shape == (2, 4)
    np.testing.assert_allclose(components[0], -direction, atol=1e-2)  # largest loading (-0.8) made positive
    np.testing.assert_allclose(components[1], second, atol=1e-2)
    np.testing.assert_allclose(components @ components.T, np.eye(2), atol=1e-12)
    _, flipped = fit_pca(-samples, n=2)  # the sign does not depend on the data's orientation
    np.testing.assert_allclose(flipped, components, atol=1e-12)
    with pytest.raises(ValueError, match="n must be between"):
        fit_pca(samples, n=5)


def test_robust_stretch() -> None:
    values = np.arange(101, dtype=np.float64)
    low, high = np.percentile(values, [2, 98])
    stretched = robust_stretch(values, low, high)
    assert stretched.dtype == np.uint8
    assert stretched[2] == 0 and stretched[98] == 255
    assert stretched[0] == 0 and stretched[100] == 255 and stretched[50] == 128
    assert (np.diff(stretched.astype(int)) >= 0).all()
    assert robust_stretch(np.array([np.nan, 1.0]), 0.0, 2.0).tolist() == [0, 128]
    assert robust_stretch(np.ones(3), 1.0, 1.0).tolist() == [0, 0, 0]


def test_runs_as_a_script(tmp_path: Path) -> None:
    script = REPO_ROOT / "btfm_infer" / "convert_npy2tiff.py"
    help_text = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                               check=True).stdout
    assert "--ref-tiff" in help_text and "--no-png" in help_text and "examples:" in help_text
    for flag in ("--zarr", "--stac", "--checkpoint", "--run-metadata", "--no-tiff", "--dtype"):
        assert flag in help_text


def test_int8_export_with_scales(tmp_path):
    """int8 + per-pixel scale reconstructs the embedding (cosine > 0.999), nodata outside the ROI."""
    import rasterio as rio

    from btfm_core.roi import open_roi
    from btfm_infer.convert_npy2tiff import INT8_NODATA, scales_path, write_embedding_geotiff

    mask = np.ones((20, 30), np.uint8)
    mask[:4, :6] = 0
    roi_path = tmp_path / "roi.tiff"
    with rio.open(roi_path, "w", driver="GTiff", width=30, height=20, count=1, dtype="uint8",
                  crs="EPSG:32631", transform=rio.Affine(10, 0, 600000, 0, -10, 5600000)) as dst:
        dst.write(mask, 1)
    emb = np.random.default_rng(0).normal(size=(20, 30, 128)).astype(np.float32)
    emb[mask == 0] = 0
    np.save(tmp_path / "emb.npy", emb)
    out = write_embedding_geotiff(tmp_path / "emb.npy", open_roi(roi_path), tmp_path / "emb.tif", dtype="int8")
    with rio.open(out) as q_src, rio.open(scales_path(out)) as s_src:
        assert q_src.dtypes[0] == "int8" and q_src.count == 128 and q_src.nodata == INT8_NODATA
        assert s_src.transform == q_src.transform and s_src.crs == q_src.crs
        q = np.moveaxis(q_src.read(), 0, -1).astype(np.float32)
        scale = s_src.read(1)
    assert (q[mask == 0] == INT8_NODATA).all() and np.isnan(scale[mask == 0]).all()
    restored = q[mask == 1] * scale[mask == 1][:, None]
    original = emb[mask == 1]
    cos = (restored * original).sum(1) / (np.linalg.norm(restored, axis=1) * np.linalg.norm(original, axis=1))
    assert cos.min() > 0.999
    assert out.stat().st_size < (tmp_path / "emb.npy").stat().st_size / 3
