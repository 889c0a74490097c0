#!/usr/bin/env bash
# Check that a headless QGIS reads BTFM GeoTIFFs as rasterio does: data type, nodata, band count,
# CRS and band 1 / last-band values of a few pixels (a corner, the centre, the centre block's minimum, a nodata pixel).
# Usage: scripts/check_qgis.sh [FILE...]   (default: a fresh float32 and int8 export of random
#   embeddings on the demo ROI, 92 x 92 px). Exit 0: QGIS reads every file as rasterio does;
#   1: a mismatch; 77: QGIS is not installed (skip). QGIS_PYTHON: the Python with qgis.core
#   (default /usr/bin/python3, Debian's python3-qgis); BTFM_PYTHON: the Python with BTFM.
set -euo pipefail
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$REPO/scripts/python_env.sh"
QGIS_PYTHON="${QGIS_PYTHON:-/usr/bin/python3}"
export QT_QPA_PLATFORM=offscreen
if ! "$QGIS_PYTHON" -c "import qgis.core" 2>/dev/null; then
    echo "QGIS not installed: apt-get install qgis python3-qgis (or set QGIS_PYTHON); skipping" >&2
    exit 77
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
FILES=("$@")
if [[ ${#FILES[@]} -eq 0 ]]; then
    "$BTFM_PYTHON" "$REPO/btfm_preprocessing/convert_shp_to_tiff.py" \
        --shapefile "$REPO/data/demo_belgium/roi.geojson" --out "$WORK/roi.tiff" -q >/dev/null
    "$BTFM_PYTHON" - "$WORK/roi.tiff" "$WORK/emb.npy" <<'PY'
import sys

import numpy as np
import rasterio

with rasterio.open(sys.argv[1]) as roi:
    inside = roi.read(1) != 0
embedding = np.random.default_rng(0).normal(size=(*inside.shape, 128)).astype(np.float32)
embedding[~inside] = 0
np.save(sys.argv[2], embedding)
PY
    for dtype in float32 int8; do
        "$BTFM_PYTHON" "$REPO/btfm_infer/convert_npy2tiff.py" --npy "$WORK/emb.npy" --ref-tiff "$WORK/roi.tiff" \
            --out "$WORK/emb_$dtype.tif" --dtype "$dtype" --no-png --no-stac --no-run-metadata -q >/dev/null
    done
    FILES=("$WORK/emb_float32.tif" "$WORK/emb_int8.tif" "$WORK/emb_int8_scales.tif")
fi

# What rasterio (our reader) sees: the reference.
"$BTFM_PYTHON" - "${FILES[@]}" >"$WORK/reference.json" <<'PY'
import json
import sys

import numpy as np
import rasterio
from rasterio.windows import Window

report = {"reader": f"rasterio {rasterio.__version__} (GDAL {rasterio.__gdal_version__})", "files": []}
for path in sys.argv[1:]:
    with rasterio.open(path) as src:
        h, w = src.height, src.width
        window = Window(max(0, w // 2 - 128), max(0, h // 2 - 128), min(w, 256), min(h, 256))
        block = src.read(1, window=window, masked=True)
        masked = np.ma.getmaskarray(block)
        pixels = {(0, 0), (h // 2, w // 2)}  # (row, col) in the dataset
        found = []
        if block.count():
            found.append(np.unravel_index(np.ma.argmin(block), block.shape))
        if masked.any():
            found.append(np.argwhere(masked)[0])
        pixels |= {(int(r) + window.row_off, int(c) + window.col_off) for r, c in found}
        pixels = sorted(pixels)
        bands = sorted({1, src.count})
        values = {f"{r},{c}": src.read(bands, window=Window(c, r, 1, 1))[:, 0, 0].tolist() for r, c in pixels}
        authority = src.crs.to_authority() if src.crs else None
        report["files"].append({"path": path, "dtype": src.dtypes[0], "nodata": src.nodata, "count": src.count,
                                "crs": ":".join(authority) if authority else "", "bands": bands, "values": values})
json.dump(report, sys.stdout)
PY

# What QGIS sees, compared with it.
"$QGIS_PYTHON" - "$WORK/reference.json" <<'PY'
import json
import math
import sys

from osgeo import gdal
from qgis.core import Qgis, QgsApplication, QgsRasterLayer, QgsRectangle

QGIS_TYPES = {1: "Byte", 2: "UInt16", 3: "Int16", 4: "UInt32", 5: "Int32", 6: "Float32", 7: "Float64", 14: "Int8"}
# QGIS < 3.30 on GDAL >= 3.7 exposes Int8 as Int16 (qgis/QGIS#51586): same values, so accepted.
EXPECTED_TYPES = {"int8": {"Int8", "Int16"}, "uint8": {"Byte"}, "int16": {"Int16"}, "uint16": {"UInt16"},
                  "int32": {"Int32"}, "uint32": {"UInt32"}, "float32": {"Float32"}, "float64": {"Float64"}}


def same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and (
        (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0)))


def mark(ok):
    return "ok" if ok else "MISMATCH"


app = QgsApplication([], False)
app.initQgis()
reference = json.load(open(sys.argv[1]))
print(f"QGIS {Qgis.QGIS_VERSION} (GDAL {gdal.__version__}) vs {reference['reader']}")
mismatches = 0
for ref in reference["files"]:
    layer = QgsRasterLayer(ref["path"], "check")
    if not layer.isValid():
        print(f"{ref['path']}: QGIS cannot open it MISMATCH")
        mismatches += 1
        continue
    provider = layer.dataProvider()
    qgis_type = QGIS_TYPES.get(int(provider.dataType(1)), str(provider.dataType(1)))
    nodata = provider.sourceNoDataValue(1) if provider.sourceHasNoDataValue(1) else None
    checks = [
        ("bands", layer.bandCount(), ref["count"], layer.bandCount() == ref["count"]),
        ("type", qgis_type, ref["dtype"], qgis_type in EXPECTED_TYPES.get(ref["dtype"], set())),
        ("nodata", nodata, ref["nodata"], same(nodata, ref["nodata"])),
        ("CRS", layer.crs().authid(), ref["crs"], layer.crs().authid() == ref["crs"]),
    ]
    print(ref["path"])
    extent, dx, dy = layer.extent(), layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    for key, expected in ref["values"].items():
        row, col = (int(v) for v in key.split(","))
        cell = QgsRectangle(extent.xMinimum() + col * dx, extent.yMaximum() - (row + 1) * dy,
                            extent.xMinimum() + (col + 1) * dx, extent.yMaximum() - row * dy)
        for band, want in zip(ref["bands"], expected):
            block = provider.block(band, cell, 1, 1)
            got = None if block.isNoData(0, 0) else block.value(0, 0)
            want_nodata = same(want, ref["nodata"]) if ref["nodata"] is not None else False
            checks.append((f"pixel (row {row}, col {col}) band {band}", got,
                           f"{want} (nodata)" if want_nodata else want,
                           got is None if want_nodata else same(got, want)))
    for name, got, want, ok in checks:
        print(f"  {name}: QGIS {got} / rasterio {want} {mark(ok)}")
        mismatches += not ok
print(f"{mismatches} mismatch(es)" if mismatches else "QGIS reads every file as rasterio does")
sys.exit(1 if mismatches else 0)
PY
