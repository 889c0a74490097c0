"""Re-create the evaluation test fixtures from ../shared/data (deterministic crops of real data).

Run from the repository root: ``.venv/bin/python tests/data/eval/make_fixtures.py``.
See PROVENANCE.md for sources and licences.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[2].parent / "shared" / "data"

#: eo-learn Slovenia: rows 0:32, columns 28:60 (five land-cover classes).
SLOVENIA_WINDOW = (0, 28, 32, 32)
#: WorldCereal France 2022 LPIS: the first samples (by sample id) of three CROPTYPE28 classes.
WORLDCEREAL_CLASSES = {"no_temporary_crop": 24, "vegetables_fruits": 18, "grass_fodder_crops": 18}
#: Presto fuel moisture: every row of these many sites (sorted by name).
FUEL_SITES = 12


def slovenia() -> None:
    """A 32 x 32 px crop of the eo-learn bundle with its grid shifted accordingly."""
    row, col, height, width = SLOVENIA_WINDOW
    with np.load(SHARED / "eolearn_slovenia" / "eolearn_slovenia_bundle.npz") as z:
        bundle = {k: z[k] for k in z.files}
    xmin, _, _, ymax = bundle["bbox_xmin_ymin_xmax_ymax"]
    x0, y1 = xmin + 10 * col, ymax - 10 * row
    out = {
        "s2_l1c_5dates_x10000": bundle["s2_l1c_5dates_x10000"][:, row:row + height, col:col + width],
        "s2_l1c_5dates_timestamps": bundle["s2_l1c_5dates_timestamps"],
        "bands": bundle["bands"], "lulc_classes": bundle["lulc_classes"], "crs_epsg": bundle["crs_epsg"],
        "lulc": bundle["lulc"][row:row + height, col:col + width],
        "bbox_xmin_ymin_xmax_ymax": np.array([x0, y1 - 10 * height, x0 + 10 * width, y1]),
        "timestamps_68": bundle["timestamps_68"],
    }
    for key in ("clm_68dates", "is_valid_68dates"):
        keep = np.isin(bundle["timestamps_68"], bundle["s2_l1c_5dates_timestamps"])
        out[key] = np.where(keep[:, None, None], bundle[key], 0)[:, row:row + height, col:col + width]
    np.savez_compressed(HERE / "slovenia_crop.npz", **out)


def worldcereal() -> None:
    """A long-format WorldCereal table of 60 parcels and the matching CROPTYPE28 legend entries."""
    src = SHARED / "pretrain_and_dev_eval"
    mapping = json.loads((src / "class_mappings.json").read_text())["CROPTYPE28"]
    table = pd.read_parquet(src / "2022_FRA_LPIS_POLY_110.geoparquet")
    first = table.sort_values(["sample_id", "timestamp"]).groupby("sample_id").first()
    first["cls"] = first["ewoc_code"].astype("int64").astype(str).map(lambda c: mapping.get(c, "ignore"))
    keep = [sid for cls, n in WORLDCEREAL_CLASSES.items() for sid in sorted(first.index[first["cls"] == cls])[:n]]
    columns = [c for c in table.columns if c.startswith(("S2-L2A-", "S1-SIGMA0-"))]
    columns += ["sample_id", "timestamp", "ewoc_code", "lat", "lon"]
    part = table.loc[table["sample_id"].isin(keep), columns].sort_values(["sample_id", "timestamp"])
    part.reset_index(drop=True).to_parquet(HERE / "worldcereal_fra_60.parquet", index=False)
    codes = {str(int(c)) for c in part["ewoc_code"].unique()}
    (HERE / "class_mappings_croptype28.json").write_text(
        json.dumps({"CROPTYPE28": {c: mapping[c] for c in sorted(codes)}}, indent=1))


def fuel_moisture() -> None:
    """All rows of a few fuel-moisture sites, in Presto's npy layout."""
    src = SHARED / "presto_regression" / "fuel_moisture"
    out = HERE / "presto_fuel_moisture"
    out.mkdir(exist_ok=True)
    site = np.load(src / "site.npy")
    rows = np.isin(site, sorted(np.unique(site))[:FUEL_SITES])
    for name in ("s1_s2_era5_srtm", "month", "target", "latlon", "site"):
        arr = np.load(src / f"{name}.npy")[rows]
        np.save(out / f"{name}.npy", arr.astype(np.float32) if name == "s1_s2_era5_srtm" else arr)


if __name__ == "__main__":
    slovenia()
    worldcereal()
    fuel_moisture()
    for path in sorted(HERE.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:>8} {path.relative_to(HERE)}")
