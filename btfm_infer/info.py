"""``btfm-info``: what a run folder or an output file holds.

- a run folder: the ROI grid (size, CRS, pixel size, bounds, inside pixels), the period, sources
  and backscatter kind from ``run_metadata.json``, tiles done and missing (preprocessing and
  embeddings), the inference record (family, checkpoint and its sha256, seed, precision) and the
  stitched map and exports present;
- a GeoTIFF, Zarr store, stitched ``.npy`` or STAC item: grid, dtype, bands, nodata and provenance.

The summary is a plain dict (:func:`describe`), printed as indented text or, with ``--json``, as
JSON on stdout. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from btfm_core.cli import HelpFormatter, add_standard_options, entry_point, prog_name
from btfm_core.errors import InputDataError, InvalidROIError, TileFormatError
from btfm_core.grid import Grid
from btfm_core.logs import setup_logging
from btfm_core.roi import Roi, open_roi
from btfm_core.run import REPRESENTATION_DIRNAME, ROI_FILE, TILES_DIRNAME, InferenceRecord, RunLayout, RunRecordError
from btfm_core.tiles import DEFAULT_TILE_SIZE, TileId, list_tiles, tile_layout
from btfm_infer.embedding_map import record_path

__all__ = ["main"]

log = logging.getLogger(__name__)

#: Tile names listed in the text summary before "... and N more".
MAX_LISTED = 12
_RUN_PARTS = (TILES_DIRNAME, REPRESENTATION_DIRNAME, RunLayout(Path()).stitched_npy.name)


def grid_summary(grid: Grid) -> dict[str, Any]:
    """Size, CRS, pixel size and bounds (map CRS and lon/lat) of a grid."""
    crs = grid.rasterio_crs
    epsg = crs.to_epsg()
    return {"width": grid.width, "height": grid.height, "crs": f"EPSG:{epsg}" if epsg else crs.to_string(),
            "pixel_size": [round(v, 6) for v in grid.resolution],
            "bounds": [round(v, 3) for v in grid.bounds],
            "lonlat_bounds": [round(v, 6) for v in grid.lonlat_bounds()]}


def describe(path: str | Path) -> dict[str, Any]:
    """The summary of a run folder or an output file.

    Raises:
        InputDataError: a missing path, a folder that is no run folder, an unknown file type.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputDataError(f"{path} does not exist; pass a run folder or an output file")
    if path.is_dir() and path.name in (TILES_DIRNAME, REPRESENTATION_DIRNAME):
        path = path.parent
    from btfm_infer.outputs import embedding_kind, is_zarr_store

    if path.is_dir() and not is_zarr_store(path):
        if not any((path / part).exists() for part in _RUN_PARTS):
            raise InputDataError(f"{path} is not a run folder (it has no {', '.join(_RUN_PARTS)}) nor a Zarr store; "
                                 "pass a run folder or an output file")
        return describe_run(path)
    if path.suffix.lower() == ".json":
        beside = path.with_suffix(".npy")
        return describe_npy(beside) if beside.is_file() and record_path(beside) == path else describe_stac(path)
    if path.is_file() and path.suffix.lower() not in (".tif", ".tiff", ".npy"):
        raise InputDataError(f"{path}: unknown file type {path.suffix or '(no suffix)'}; btfm-info reads run folders, "
                             "GeoTIFFs (.tif), Zarr stores (.zarr), stitched .npy files and STAC items (.json)")
    kind = embedding_kind(path)
    return {"geotiff": describe_geotiff, "zarr": describe_zarr, "npy": describe_npy}[kind](path)


def _run_roi(run_dir: Path, meta: dict[str, Any]) -> tuple[Roi | None, str | None]:
    """The run's ROI (``roi.tiff`` in the folder, else the one recorded) and, if unusable, why."""
    candidates = [run_dir / ROI_FILE]
    if isinstance(meta.get("roi"), str):
        candidates.append(Path(meta["roi"]))
    for candidate in candidates:
        if candidate.is_file():
            try:
                return open_roi(candidate), None
            except InvalidROIError as exc:
                return None, str(exc)
    return None, f"no {ROI_FILE} in {run_dir}"


def describe_run(run_dir: Path) -> dict[str, Any]:
    """Summary of a run folder (see the module doc)."""
    run = RunLayout(run_dir)
    tiles_dir, rep_dir = run.tiles_dir, run.representation_dir
    recorded = run.run_metadata(strict=False)
    meta = recorded.to_json() if recorded else {}
    roi, roi_problem = _run_roi(run_dir, meta)
    summary: dict[str, Any] = {"kind": "run", "path": str(run_dir)}
    summary["roi"] = ({"path": str(roi.path), **grid_summary(roi.grid), "inside_pixels": roi.inside_pixels}
                      if roi is not None else {"problem": roi_problem})
    summary["preprocessing"] = preprocessing_summary(meta) if meta else {"problem": f"no readable "
                                                                         f"{TILES_DIRNAME}/run_metadata.json"}
    summary["tiles"] = tiles_summary(tiles_dir, rep_dir, roi, meta)
    summary["inference"] = inference_summary(run.inference_record_file)
    summary["outputs"] = outputs_summary(run_dir)
    return summary


def preprocessing_summary(meta: dict[str, Any]) -> dict[str, Any]:
    """Period, sources, backscatter kind and scene counts of a ``run_metadata.json``."""
    out: dict[str, Any] = {
        "period": {"s2": meta.get("s2_period"), "s1": meta.get("s1_period")},
        "s2_source": {"source": meta.get("source"), "collection": meta.get("s2_collection")},
        "s1_source": {"source": meta.get("s1_source"), "collection": meta.get("s1_collection")},
        "backscatter": {"requested": meta.get("s1_backscatter"), "recorded": meta.get("s1_backscatter_recorded")},
        "scenes": {"s2": meta.get("s2_scenes"), "s1": meta.get("s1_scenes")},
    }
    for key in ("root", "max_cloud", "tile_size", "run_key", "s2_notes", "s1_notes"):
        if key in meta:
            out[key] = meta[key]
    return out


def _tiles_with_roi(roi: Roi, tiles: list[TileId]) -> list[TileId]:
    """The tiles holding at least one ROI pixel (the ROI read one tile row at a time)."""
    keep: list[TileId] = []
    by_row: dict[tuple[int, int], list[TileId]] = {}
    for tile in tiles:
        by_row.setdefault((tile.y0, tile.y1), []).append(tile)
    for (y0, y1), row_tiles in by_row.items():
        strip = roi.read_mask(roi.grid.window(0, y0, roi.grid.width, y1))
        keep += [t for t in row_tiles if strip[:, t.x0:t.x1].any()]
    return keep


def _tile_size(meta: dict[str, Any], present: list[TileId]) -> int:
    if isinstance(meta.get("tile_size"), int) and meta["tile_size"] > 0:
        return int(meta["tile_size"])
    return max((max(t.shape) for t in present), default=DEFAULT_TILE_SIZE)


def _present_tiles(tiles_dir: Path) -> list[TileId]:
    try:
        return list_tiles(tiles_dir)
    except TileFormatError:
        return []


def tiles_summary(tiles_dir: Path, rep_dir: Path, roi: Roi | None, meta: dict[str, Any]) -> dict[str, Any]:
    """Tiles expected (the ROI's tile layout, tiles with an ROI pixel), done and missing, for tiles and embeddings."""
    present = _present_tiles(tiles_dir)
    size = _tile_size(meta, present)
    expected = _tiles_with_roi(roi, tile_layout(*roi.grid.shape, size)) if roi is not None else present
    embedded = {TileId.parse(p.stem) for p in rep_dir.glob("*.npy") if _is_tile_name(p.stem)} \
        if rep_dir.is_dir() else set()
    have = set(present)
    return {
        "tile_size": size, "expected": len(expected),
        "preprocessed": {"done": len(have & set(expected)), "missing": [t.name for t in expected if t not in have],
                         "unexpected": sorted(t.name for t in have - set(expected))},
        "embedded": {"done": len(embedded & set(expected)),
                     "missing": [t.name for t in expected if t not in embedded]},
    }


def _is_tile_name(name: str) -> bool:
    try:
        TileId.parse(name)
    except TileFormatError:
        return False
    return True


def inference_summary(path: Path) -> dict[str, Any]:
    """Family, checkpoint (name, sha256), dimensions and sampling settings of an inference record."""
    try:
        record = InferenceRecord.read(path)
    except RunRecordError:
        return {"problem": f"no readable {path.parent.name}/{path.name} (inference has not run here)"}
    model = dict(record.model)
    recorded_config = model.get("config")
    config: dict[str, Any] = recorded_config if isinstance(recorded_config, dict) else {}
    dims = {k: config[k] for k in ("d_model", "num_layers", "nhead", "dim_feedforward") if k in config}
    return {"family": model.get("family"), "family_title": model.get("family_title"),
            "checkpoint": model.get("name"), "sha256": model.get("sha256"), "size_bytes": model.get("size_bytes"),
            "embedding_dim": model.get("embedding_dim"), "stats": model.get("stats"),
            "input_rule": model.get("input_rule"), "int8_rule": model.get("int8_rule"), "model_dims": dims,
            "seed": record.seed, "repeat": record.repeat, "precision": record.precision}


def _file_kind(path: Path) -> str | None:
    if path.name.endswith(".stac.json"):
        return "stac-item"
    if path.is_dir() and path.suffix == ".zarr":
        return "zarr"
    return {".tif": "geotiff", ".tiff": "geotiff", ".png": "png", ".npy": "npy"}.get(path.suffix.lower())


def outputs_summary(run_dir: Path) -> dict[str, Any]:
    """The stitched map (shape from its record) and every export file in the run folder."""
    stitched = RunLayout(run_dir).stitched_npy
    out: dict[str, Any] = {"stitched": None}
    if stitched.is_file():
        out["stitched"] = {"path": stitched.name, "record": record_path(stitched).is_file(),
                           "shape": list(np.load(stitched, mmap_mode="r").shape)}
    files = []
    for entry in sorted(run_dir.iterdir()):
        kind = _file_kind(entry)
        if kind is None or entry == stitched or entry.name == ROI_FILE or entry.name.startswith("."):
            continue
        item: dict[str, Any] = {"name": entry.name, "kind": kind}
        if kind == "geotiff":
            try:
                with rasterio.open(entry) as src:
                    item.update(dtype=src.dtypes[0], bands=src.count, first_band=src.descriptions[0])
            except RasterioIOError as exc:
                item["problem"] = str(exc)
        files.append(item)
    out["exports"] = files
    return out


def _tags(tags: dict[str, str]) -> dict[str, Any]:
    """BTFM tags of a GeoTIFF, JSON values decoded."""
    out: dict[str, Any] = {}
    for key, value in sorted(tags.items()):
        if not key.startswith("BTFM_"):
            continue
        try:
            out[key] = json.loads(value) if value[:1] in "{[" else value
        except ValueError:
            out[key] = value
    return out


def _band_range(names: Sequence[str]) -> str:
    return f"{names[0]}..{names[-1]}" if len(names) > 1 else (names[0] if names else "")


def describe_geotiff(path: Path) -> dict[str, Any]:
    """Grid, dtype, bands, nodata, layout and BTFM tags of a GeoTIFF."""
    from btfm_infer.export_cog import scales_path

    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputDataError(f"{path} is not a raster GDAL can read ({exc})") from exc
    with src:
        if src.crs is None:
            raise InputDataError(f"{path} has no CRS; not a BTFM output")
        out: dict[str, Any] = {
            "kind": "geotiff", "path": str(path), "grid": grid_summary(Grid.from_dataset(src)),
            "dtype": src.dtypes[0], "bands": src.count,
            "band_names": _band_range([d or f"band {i + 1}" for i, d in enumerate(src.descriptions)]),
            "nodata": _json_number(src.nodata),
            "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT", "GTiff"),
            "compression": src.compression.name.lower() if src.compression else None,
            "block": list(src.block_shapes[0]), "overviews": src.overviews(1),
            "provenance": _tags(src.tags())}
    if out["dtype"] == "int8":
        scales = scales_path(path)
        out["scales"] = scales.name if scales.is_file() else f"missing ({scales.name})"
    return out


def _json_number(value: float | np.generic | None) -> float | int | str | None:
    """A nodata value for JSON: numbers as they are, NaN as ``"nan"``."""
    if value is None:
        return None
    number = value.item() if isinstance(value, np.generic) else value
    return "nan" if np.isnan(number) else number


def describe_zarr(path: Path) -> dict[str, Any]:
    """Grid, arrays, dtype, nodata and provenance attributes of a Zarr embedding store."""
    import xarray as xr

    from btfm_infer.outputs import open_embedding

    embedding = open_embedding(path, dequantise=False)
    attrs = embedding.attrs
    dataset = xr.open_zarr(path, mask_and_scale=False)
    grid = Grid(embedding.rio.crs.to_wkt(), embedding.rio.transform(), embedding.sizes["y"], embedding.sizes["x"])
    arrays = {name: {"dims": list(var.dims), "shape": list(var.shape), "dtype": str(var.dtype),
                     "chunks": list(var.encoding.get("chunks") or [])} for name, var in dataset.data_vars.items()}
    provenance = {k: attrs[k] for k in ("model", "sources", "period", "int8_cosine", "layout") if k in attrs}
    return {"kind": "zarr", "path": str(path), "grid": grid_summary(grid), "dtype": attrs.get("btfm:storage_dtype"),
            "bands": int(embedding.sizes["band"]),
            "band_names": _band_range([str(b) for b in embedding["band"].values]),
            "nodata": _json_number(embedding.rio.nodata), "arrays": arrays,
            "format": f"{attrs.get('format', '?')} v{attrs.get('format_version', '?')}", "provenance": provenance}


def describe_npy(path: Path) -> dict[str, Any]:
    """Shape, dtype and grid record of a stitched ``.npy``."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputDataError(f"{path}: not a readable .npy array ({exc})") from exc
    out: dict[str, Any] = {"kind": "npy", "path": str(path), "shape": list(data.shape), "dtype": str(data.dtype)}
    record = record_path(path)
    if record.is_file():
        from btfm_infer.outputs import npy_grid

        out["grid"] = grid_summary(npy_grid(path))
        out["record"] = record.name
    else:
        out["grid"] = {"problem": f"no grid record {record.name} beside it (made by btfm-stitch)"}
    out["band_names"] = _band_range([f"A{i:02d}" for i in range(data.shape[-1])]) if data.ndim == 3 else ""
    roi = path.parent / ROI_FILE
    out["roi"] = roi.name if roi.is_file() else None
    return out


def describe_stac(path: Path) -> dict[str, Any]:
    """Id, period, footprint, grid, assets and BTFM properties of a STAC item.

    Raises:
        InputDataError: the file is not a STAC item.
    """
    import pystac

    try:
        item = pystac.Item.from_file(str(path))
    except (ValueError, KeyError, TypeError, OSError, pystac.STACError, pystac.errors.STACTypeError) as exc:
        raise InputDataError(f"{path} is not a STAC item ({exc}); btfm-info reads run folders, GeoTIFFs, Zarr "
                             "stores, stitched .npy files and STAC items") from exc
    props = item.properties
    assets = {key: {"href": asset.href, "type": asset.media_type,
                    "present": (path.parent / asset.href).exists() if "://" not in asset.href else None,
                    **({"checksum": asset.extra_fields["file:checksum"]} if "file:checksum" in asset.extra_fields
                       else {})}
              for key, asset in item.assets.items()}
    return {"kind": "stac-item", "path": str(path), "id": item.id,
            "datetime": props.get("datetime"), "start": props.get("start_datetime"), "end": props.get("end_datetime"),
            "bbox": item.bbox, "proj": {k: v for k, v in props.items() if k.startswith("proj:") and k != "proj:wkt2"},
            "assets": assets, **{k: v for k, v in props.items() if k.startswith("btfm:")}}


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    return "-" if value is None else str(value)


def render(summary: Any, indent: int = 0) -> Iterable[str]:
    """Indented ``key: value`` lines of a summary; long lists are cut after :data:`MAX_LISTED` items."""
    pad = "  " * indent
    for key, value in summary.items():
        if isinstance(value, dict):
            yield f"{pad}{key}:" if value else f"{pad}{key}: -"
            yield from render(value, indent + 1)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            yield f"{pad}{key}:"
            for entry in value:
                yield f"{pad}  - " + ", ".join(f"{k} {_scalar(v)}" for k, v in entry.items())
        elif isinstance(value, list):
            shown = ", ".join(_scalar(v) for v in value[:MAX_LISTED])
            more = f" ... and {len(value) - MAX_LISTED} more" if len(value) > MAX_LISTED else ""
            yield f"{pad}{key}: {shown or 'none'}{more}"
        else:
            yield f"{pad}{key}: {_scalar(value)}"


def build_parser() -> argparse.ArgumentParser:
    """Command line of ``btfm-info``."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_infer.info"),
        description="Say what a run folder holds (ROI grid, period, sources, backscatter kind, tiles done and "
                    "missing, model family and checksum, outputs) or what an output file holds (GeoTIFF, Zarr "
                    "store, stitched .npy, STAC item: grid, dtype, bands, nodata, provenance).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  btfm-info my_data\n"
               "  btfm-info my_data/stitched_representation.tif --json\n",
    )
    parser.add_argument("path", type=Path, help="a run folder, or a GeoTIFF, Zarr store, .npy or STAC item")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_standard_options(parser)
    return parser


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary. Exit 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    summary = describe(args.path)
    text = json.dumps(summary, indent=2, default=str) if args.json else "\n".join(render(summary))
    print(text, flush=True)  # piped into head: entry_point ends quietly
    return 0


if __name__ == "__main__":
    sys.exit(main())
