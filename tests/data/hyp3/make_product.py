"""Regenerate ``S1A_IW_20150309T173017_DVP_RTC20_G_gpuned_C4MG.zip``, a HyP3-RTC-like product zip.

Content: a crop of a REAL geocoded Sentinel-1 VV tile (pyroSAR test data, Camargue, 2015-03-09,
EPSG:32631, 20 m, gamma0-normalised dB; MIT), converted from dB to linear power. VH is DERIVED:
``VH_dB = VV_dB - 7`` (a typical cross-pol ratio over land); there is no recorded VH. Nodata
(-99 dB in the source) becomes 0, as in HyP3 products. The layout is a HyP3 RTC product's:
``<name>/<name>_VV.tif`` and ``<name>/<name>_VH.tif`` plus a README.

Run from the repository root (needs ../shared/data):
    .venv/bin/python tests/data/hyp3/make_product.py
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[2].parent / "shared" / "data" / "s1_geocoded_db" / \
    "S1A__IW___A_20150309T173017_VV_grd_mli_geo_norm_db.tif"
NAME = "S1A_IW_20150309T173017_DVP_RTC20_G_gpuned_C4MG"
WINDOW = Window(col_off=50, row_off=50, width=100, height=80)  # 2 x 1.6 km
VH_MINUS_VV_DB = -7.0


def geotiff_bytes(power: np.ndarray, profile: dict) -> bytes:
    """A float32 GeoTIFF (nodata 0) in memory."""
    with rasterio.MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(power.astype(np.float32), 1)
        return memory.read()


def main() -> None:
    with rasterio.open(SOURCE) as src:
        db = src.read(1, window=WINDOW).astype(np.float64)
        valid = db != src.nodata
        profile = {"driver": "GTiff", "width": WINDOW.width, "height": WINDOW.height, "count": 1,
                   "dtype": "float32", "crs": src.crs, "transform": src.window_transform(WINDOW), "nodata": 0.0,
                   "compress": "deflate", "tiled": False}
    layers = {"VV": db, "VH": db + VH_MINUS_VV_DB}
    out = HERE / f"{NAME}.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for pol, values in layers.items():
            power = np.where(valid, 10.0 ** (values / 10.0), 0.0)
            info = zipfile.ZipInfo(f"{NAME}/{NAME}_{pol}.tif", date_time=(2015, 3, 9, 17, 30, 17))
            archive.writestr(info, geotiff_bytes(power, profile), zipfile.ZIP_DEFLATED)
        info = zipfile.ZipInfo(f"{NAME}/{NAME}.README.md.txt", date_time=(2015, 3, 9, 17, 30, 17))
        archive.writestr(info, "Test fixture, see tests/data/hyp3/PROVENANCE.md\n")
    out.write_bytes(buffer.getvalue())
    print(out, out.stat().st_size)


if __name__ == "__main__":
    main()
