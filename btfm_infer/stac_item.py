"""Provenance of an exported embedding and its STAC item (projection + raster extensions).

Provenance comes from two optional places: the preprocessing run's ``run_metadata.json``
(``retiled_d_pixel/run_metadata.json`` beside the stitched ``.npy``; sources, collections,
backscatter kind, S2/S1 periods) and the checkpoint file given on the command line (name,
sha256, model dimensions). Both are recorded in the GeoTIFF tags, the Zarr attributes and the
STAC item. The item is written without timestamps of its own and with relative asset hrefs, so
the same run gives the same bytes and the folder can be moved.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from rasterio.warp import transform as transform_points

from btfm_core.errors import CheckpointError, InputDataError
from btfm_core.fileio import atomic_path
from btfm_core.grid import Grid
from btfm_core.tiles import RUN_METADATA_FILE

log = logging.getLogger(__name__)

#: Folder of the preprocessing tiles in a run folder (holds ``run_metadata.json``).
TILES_DIRNAME = "retiled_d_pixel"
#: Keys of ``run_metadata.json`` copied into the outputs' provenance (no local paths).
SOURCE_KEYS = ("source", "root", "s2_collection", "s1_source", "s1_collection", "s1_backscatter",
               "s1_backscatter_recorded", "s2_period", "s1_period", "max_cloud", "s2_scenes", "s1_scenes")
#: Points per edge when projecting the grid's outline to longitude/latitude.
_EDGE_POINTS = 21


@dataclass(frozen=True)
class Provenance:
    """What an embedding was made from; every part is optional.

    Attributes:
        sources: selected ``run_metadata.json`` entries (:data:`SOURCE_KEYS`).
        model: checkpoint ``name``, ``sha256``, ``size_bytes``, model ``config`` dims and, from the
            inference record, ``family``, ``embedding_dim``, ``stats``, ``input_rule``, ``int8_rule``.
        start: start of the observation period (UTC), if known.
        end: end of the observation period (UTC, inclusive), if known.
    """

    sources: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def tags(self) -> dict[str, str]:
        """GeoTIFF dataset tags (strings; JSON for structured values)."""
        out: dict[str, str] = {}
        if self.model:
            out["BTFM_CHECKPOINT"] = str(self.model.get("name", ""))
            out["BTFM_CHECKPOINT_SHA256"] = str(self.model.get("sha256", ""))
            out["BTFM_MODEL_CONFIG"] = json.dumps(self.model.get("config", {}), sort_keys=True)
            for key in ("family", "stats", "input_rule", "int8_rule"):
                if key in self.model:
                    out[f"BTFM_MODEL_{key.upper()}"] = str(self.model[key])
        if self.sources:
            out["BTFM_SOURCES"] = json.dumps(self.sources, sort_keys=True, default=str)
        if self.start and self.end:
            out["BTFM_PERIOD"] = f"{self.start.date().isoformat()}..{self.end.date().isoformat()}"
        return out

    def attributes(self) -> dict[str, Any]:
        """JSON-serialisable provenance (Zarr attributes, STAC properties)."""
        out: dict[str, Any] = {}
        if self.model:
            out["model"] = self.model
        if self.sources:
            out["sources"] = self.sources
        if self.start and self.end:
            out["period"] = [_iso(self.start), _iso(self.end)]
        return out


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Folder of the per-tile embeddings in a run folder (holds ``inference.json``).
REPRESENTATION_DIRNAME = "representation_retiled"


def find_run_metadata(npy_path: str | os.PathLike[str]) -> Path | None:
    """The preprocessing run's metadata beside a stitched ``.npy``, if there is one."""
    path = Path(npy_path).parent / TILES_DIRNAME / RUN_METADATA_FILE
    return path if path.is_file() else None


def find_inference_model(npy_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Model and sampling settings recorded by ``infer_all_tiles`` in ``representation_retiled/``
    beside a stitched ``.npy`` (checkpoint name, sha256, dims, seed, repeat, precision), or None."""
    from btfm_infer.tile_inference import read_inference_record

    record = read_inference_record(Path(npy_path).parent / REPRESENTATION_DIRNAME)
    if not record or not isinstance(record.get("model"), dict):
        return None
    return {**record["model"], **{k: record[k] for k in ("seed", "repeat", "precision") if k in record}}


def read_run_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``run_metadata.json``.

    Raises:
        InputDataError: if it is missing or not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"run metadata {path} is not readable JSON ({exc}); pass --run-metadata with "
                             "the run_metadata.json of the preprocessing run, or --no-run-metadata") from exc
    if not isinstance(data, dict):
        raise InputDataError(f"run metadata {path} holds a {type(data).__name__}, expected a JSON object")
    return data


def parse_period(text: str) -> tuple[dt.datetime, dt.datetime]:
    """``YYYY-MM-DD..YYYY-MM-DD`` → (start 00:00:00 UTC, end 23:59:59 UTC).

    Raises:
        ValueError: if the text is not such a range or is reversed.
    """
    first, sep, last = text.partition("..")
    if not sep:
        raise ValueError(f"period {text!r} is not START..END (YYYY-MM-DD..YYYY-MM-DD)")
    start = dt.datetime.combine(dt.date.fromisoformat(first.strip()), dt.time(0, 0, 0), dt.timezone.utc)
    end = dt.datetime.combine(dt.date.fromisoformat(last.strip()), dt.time(23, 59, 59), dt.timezone.utc)
    if end < start:
        raise ValueError(f"period {text!r} ends before it starts")
    return start, end


def checkpoint_info(path: str | os.PathLike[str], stats: str | None = None, dim: int | None = None) -> dict[str, Any]:
    """Name, sha256, size, family and dimensions of a checkpoint (loads it with torch, weights only).

    ``stats`` (v1.1 ``mpc``/``aws``) and ``dim`` are as given to ``infer_all_tiles``; the
    inference record beside the embedding has them already, so this is for files without one.

    Raises:
        CheckpointError: if the file is missing or not a BTFM checkpoint.
    """
    from btfm_infer.checkpoint import load_model  # torch: imported only when a checkpoint is given
    from btfm_infer.tile_inference import model_record

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check --checkpoint")
    return model_record(path, load_model(path, "cpu", stats=stats), dim)


def build_provenance(run_metadata: Mapping[str, Any] | None = None,
                     model: Mapping[str, Any] | None = None) -> Provenance:
    """Provenance from a run's metadata and a :func:`checkpoint_info` dict (either may be None).

    The period spans the S2 and S1 periods recorded by preprocessing.
    """
    meta = dict(run_metadata or {})
    sources = {k: meta[k] for k in SOURCE_KEYS if k in meta}
    root = sources.get("root")
    if isinstance(root, str) and "://" not in root:  # a local catalog: its name, not this machine's path
        sources["root"] = Path(root).name
    periods = []
    for key in ("s2_period", "s1_period"):
        if isinstance(meta.get(key), str):
            try:
                periods.append(parse_period(meta[key]))
            except ValueError as exc:
                log.warning("run metadata: ignoring %s (%s)", key, exc)
    start = min((p[0] for p in periods), default=None)
    end = max((p[1] for p in periods), default=None)
    return Provenance(sources=sources, model=dict(model or {}), start=start, end=end)


def lonlat_outline(grid: Grid) -> list[list[float]]:
    """The grid's outline as a closed lon/lat ring (edges densified), counter-clockwise."""
    left, bottom, right, top = grid.bounds
    n = _EDGE_POINTS - 1
    xs: list[float] = []
    ys: list[float] = []
    for (x0, y0), (x1, y1) in (((left, bottom), (right, bottom)), ((right, bottom), (right, top)),
                               ((right, top), (left, top)), ((left, top), (left, bottom))):
        for i in range(n):
            xs.append(x0 + (x1 - x0) * i / n)
            ys.append(y0 + (y1 - y0) * i / n)
    lons, lats = transform_points(grid.rasterio_crs, "EPSG:4326", xs, ys)
    ring = [[round(lon, 7), round(lat, 7)] for lon, lat in zip(lons, lats, strict=True)]
    return [*ring, ring[0]]


@dataclass(frozen=True)
class AssetSpec:
    """One output to list in the STAC item.

    Attributes:
        key: asset key (``embedding``, ``scales``, ``zarr``, ``quicklook``).
        path: the file or store.
        media_type: its media type.
        roles: STAC roles.
        title: human-readable title.
        bands: raster:bands entries as ``(data_type, nodata, count)``, or None for no raster:bands.
        extra: more asset fields (``btfm:`` prefixed).
    """

    key: str
    path: Path
    media_type: str
    roles: Sequence[str]
    title: str
    bands: tuple[str, float | int | str, int] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _href(target: Path, item_path: Path) -> str:
    return "./" + Path(os.path.relpath(target, item_path.parent)).as_posix()


def build_item(item_id: str, grid: Grid, provenance: Provenance, assets: Sequence[AssetSpec], item_path: Path,
               properties: Mapping[str, Any] | None = None,
               fallback_datetime: dt.datetime | None = None) -> pystac.Item:
    """A STAC item for the exported embedding: footprint, period, projection, assets, provenance.

    Args:
        item_id: the item id (the output's file stem).
        grid: the ROI grid (footprint, projection).
        provenance: sources, model and period.
        assets: the outputs; hrefs are made relative to ``item_path``.
        item_path: where the item will be written.
        properties: more item properties (``btfm:`` prefixed).
        fallback_datetime: ``datetime`` when the provenance has no period.

    Raises:
        InputDataError: if neither a period nor a fallback datetime is known.
    """
    ring = lonlat_outline(grid)
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    bbox = [min(lons), min(lats), max(lons), max(lats)]
    props: dict[str, Any] = {"gsd": grid.resolution[0], **{f"btfm:{k}": v for k, v in provenance.attributes().items()
                                                           if k != "period"}}  # the period is start/end_datetime
    props.update(properties or {})
    if provenance.start and provenance.end:
        item = pystac.Item(item_id, {"type": "Polygon", "coordinates": [ring]}, bbox, None, props,
                           start_datetime=provenance.start, end_datetime=provenance.end)
    elif fallback_datetime is not None:
        item = pystac.Item(item_id, {"type": "Polygon", "coordinates": [ring]}, bbox, fallback_datetime, props)
    else:
        raise InputDataError("no observation period is known for the STAC item; pass --run-metadata")
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = grid.rasterio_crs.to_epsg()
    proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else grid.crs, shape=list(grid.shape),
               transform=list(grid.transform)[:6], bbox=list(grid.bounds))
    for spec in assets:
        asset = pystac.Asset(_href(spec.path, item_path), title=spec.title, media_type=spec.media_type,
                             roles=list(spec.roles), extra_fields=dict(spec.extra))
        item.add_asset(spec.key, asset)
        if spec.bands is not None:
            data_type, nodata, count = spec.bands
            band = {"data_type": DataType(data_type), "nodata": nodata, "spatial_resolution": grid.resolution[0]}
            RasterExtension.ext(asset, add_if_missing=True).apply([RasterBand.create(**band) for _ in range(count)])
    return item


def write_item(item: pystac.Item, path: str | os.PathLike[str]) -> Path:
    """Write an item as JSON (strict: no NaN), atomically; self link left out (hrefs are relative)."""
    path = Path(path)
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path
