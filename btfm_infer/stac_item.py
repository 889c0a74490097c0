"""Provenance of an exported embedding and its STAC item.

Provenance comes from two optional places: the preprocessing run's ``run_metadata.json``
(``retiled_d_pixel/run_metadata.json`` beside the stitched ``.npy``; sources, collections,
backscatter kind, S2/S1 periods) and the model: the checkpoint file given on the command line
or what ``infer_all_tiles`` recorded in ``representation_retiled/inference.json`` (name, sha256,
size, family, statistics, dimensions). Both are recorded in the GeoTIFF tags, the Zarr
attributes and the STAC item. The item is written without timestamps of its own and with
relative asset hrefs, so the same run gives the same bytes and the folder can be moved.

The item uses STAC 1.1 and these extensions, so that generic tools read it:

- projection v2 (grid) and raster v1.1 (``raster:bands``: data type, nodata, resolution);
- band names ``A00`` … on the embedding, both as STAC 1.1 ``bands`` and as EO v1.1
  ``eo:bands`` (odc-stac names its variables from ``eo:bands``);
- MLM v1.4 (the model: name, architecture, framework, inputs in the tile band order with the
  family's normalisation, output, dimensions) with a ``model`` asset for the checkpoint;
- file v2.1: ``file:size`` and ``file:checksum`` (SHA2-256 multihash) of every file asset.

What MLM has no field for stays under ``btfm:`` (:data:`BTFM_MODEL_KEYS`, sources, export details).
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.mlm import MLMExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, NoDataStrings, RasterBand, RasterExtension
from rasterio.warp import transform as transform_points

from btfm_core.errors import CheckpointError, InputDataError
from btfm_core.fileio import atomic_path, file_digest
from btfm_core.grid import Grid
from btfm_core.run import RunLayout, RunMetadata, RunRecordError
from btfm_core.tiles import S1_BANDS, S2_BANDS
from btfm_infer.export_common import band_names
from btfm_infer.families import FAMILIES, STATS, Family, NormStats
from btfm_infer.sampling import SEQ_LEN

__all__ = ["AssetSpec", "Provenance", "build_item", "build_provenance",
           "checkpoint_info", "file_fields", "find_inference_model", "lonlat_outline",
           "mlm_properties", "parse_period", "sha256_multihash", "write_item"]

log = logging.getLogger(__name__)

#: Keys of ``run_metadata.json`` copied into the outputs' provenance (no local paths).
SOURCE_KEYS = ("source", "root", "s2_collection", "s1_source", "s1_collection", "s1_backscatter",
               "s1_backscatter_recorded", "s2_period", "s1_period", "max_cloud", "s2_scenes", "s1_scenes")
#: Points per edge when projecting the grid's outline to longitude/latitude.
_EDGE_POINTS = 21
#: Multihash prefix of a SHA2-256 digest (function 0x12, 0x20 bytes), as ``file:checksum`` wants it.
SHA256_MULTIHASH_PREFIX = "1220"
#: Asset key of the checkpoint (the MLM model asset).
MODEL_ASSET = "model"
#: Media type of a ``torch.save`` checkpoint (MLM's recommendation for a PyTorch ``.pt``).
CHECKPOINT_MEDIA_TYPE = "application/octet-stream; framework=pytorch"
#: MLM v1.4 has no "embedding" or "feature-extraction" task; embeddings serve similarity search.
MLM_TASKS = ("similarity-search",)
#: Model record keys MLM has no field for, kept as ``btfm:model`` (family name, statistics set,
#: input and int8 rules, and the inference run's seed, repeat and precision).
BTFM_MODEL_KEYS = ("family", "stats", "input_rule", "int8_rule", "seed", "repeat", "precision")
#: EO v1.1 common names of the S2 bands of the tiles.
S2_COMMON_NAMES = {"B04": "red", "B02": "blue", "B03": "green", "B08": "nir", "B8A": "nir08", "B05": "rededge",
                   "B06": "rededge", "B07": "rededge", "B11": "swir16", "B12": "swir22"}


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


def find_inference_model(npy_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Model and sampling settings recorded by ``infer_all_tiles`` in the run folder of a stitched
    ``.npy`` (checkpoint name, sha256, dims, seed, repeat, precision), or None."""
    try:
        record = RunLayout.around(npy_path).inference_record()
    except RunRecordError as exc:
        log.warning("provenance: %s; the model is not recorded", exc)
        return None
    if record is None:
        return None
    return {**record.model, "seed": record.seed, "repeat": record.repeat, "precision": record.precision}


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


def build_provenance(run_metadata: RunMetadata | Mapping[str, Any] | None = None,
                     model: Mapping[str, Any] | None = None) -> Provenance:
    """Provenance from a run's metadata and a :func:`checkpoint_info` dict (either may be None).

    The period spans the S2 and S1 periods recorded by preprocessing.
    """
    meta = run_metadata.to_json() if isinstance(run_metadata, RunMetadata) else dict(run_metadata or {})
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
        bands: the bands as ``(data_type, nodata, count)``, or None for an asset without bands.
        extra: more asset fields (``btfm:`` prefixed).
        band_names: names of the bands; default ``A00`` … (:func:`~btfm_infer.export_common.band_names`)
            for several bands, the asset key for one.
    """

    key: str
    path: Path
    media_type: str
    roles: Sequence[str]
    title: str
    bands: tuple[str, float | int | str, int] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    band_names: Sequence[str] | None = None


def _href(target: Path, item_path: Path) -> str:
    return "./" + Path(os.path.relpath(target, item_path.parent)).as_posix()


def sha256_multihash(hex_digest: str) -> str:
    """A hex SHA-256 digest as the multihash hex string of ``file:checksum``."""
    if not re.fullmatch(r"[0-9a-f]{64}", hex_digest):
        raise ValueError(f"not a lower-case hex SHA-256 digest: {hex_digest!r}")
    return SHA256_MULTIHASH_PREFIX + hex_digest


def file_fields(path: Path) -> dict[str, Any]:
    """``file:size`` (bytes) and ``file:checksum`` of a file, read in chunks; {} for a folder (a Zarr store)."""
    if not path.is_file():
        return {}
    return {"file:size": path.stat().st_size, "file:checksum": sha256_multihash(file_digest(path))}


def _add_bands(asset: pystac.Asset, spec: AssetSpec, resolution: float) -> None:
    """Name the asset's bands: STAC 1.1 ``bands``, ``eo:bands`` (odc-stac's variable names), ``raster:bands``."""
    assert spec.bands is not None
    data_type, nodata, count = spec.bands
    names = list(spec.band_names or (band_names(count) if count > 1 else [spec.key]))
    if len(names) != count:
        raise ValueError(f"asset {spec.key}: {len(names)} band names for {count} bands")
    described = [(name, f"embedding dimension {i} of {count}" if spec.band_names is None and count > 1
                  else spec.title) for i, name in enumerate(names)]
    asset.extra_fields["bands"] = [{"name": name, "description": text, "data_type": data_type, "nodata": nodata}
                                   for name, text in described]
    EOExtension.ext(asset, add_if_missing=True).apply(
        bands=[Band.create(name=name, description=text) for name, text in described])
    raster_nodata = NoDataStrings(nodata) if isinstance(nodata, str) else nodata  # "nan" and the like
    RasterExtension.ext(asset, add_if_missing=True).apply(
        [RasterBand.create(data_type=DataType(data_type), nodata=raster_nodata, spatial_resolution=resolution)
         for _ in range(count)])


def _shortest(values: np.ndarray) -> list[float]:
    """The float32 values the model applies, as the shortest decimals that give them back (``2683.4553``)."""
    return [float(np.format_float_positional(v, unique=True, trim="-")) for v in np.asarray(values, np.float32)]


def _z_scores(mean: np.ndarray, std: np.ndarray) -> list[dict[str, Any]]:
    return [{"type": "z-score", "mean": m, "stddev": s} for m, s in zip(_shortest(mean), _shortest(std), strict=True)]


def mlm_inputs(family: Family, stats: NormStats) -> list[dict[str, Any]]:
    """MLM input objects: S2 and S1 (ascending, descending) series in the tile band order, standardised.

    The model's inputs are ``s2_x`` (B, T, 11) and ``s1_x`` (B, T', 3) float32: the bands standardised
    as ``(x - mean) / (std + 1e-9)``, then the raw day of year. S1 ascending and descending steps
    have their own statistics and are concatenated in time (ascending first) into ``s1_x``.
    """
    sampled = family.input_rule == "sampled-40"
    steps = SEQ_LEN if sampled else -1
    rule = (f"{SEQ_LEN} time steps drawn per pixel among its valid ones (input rule {family.input_rule})" if sampled
            else f"every valid observation, resampled to a bucket length (input rule {family.input_rule})")
    structure: dict[str, Any] = {"dim_order": ["batch", "time", "channel"], "data_type": "float32"}
    s2 = {"name": "s2_x", "bands": list(S2_BANDS),
          "input": {"shape": [-1, steps, len(S2_BANDS) + 1], **structure},
          "description": f"Sentinel-2 L2A reflectance x 10000 of the bands in this order, standardised by "
                         f"value_scaling, then the raw day of year (1-366) as the last channel; {rule}",
          "value_scaling": _z_scores(stats.s2_mean, stats.s2_std)}
    s1: list[dict[str, Any]]
    s1 = [{"name": f"s1_x {direction}", "bands": list(S1_BANDS),
           "input": {"shape": [-1, -1, len(S1_BANDS) + 1], **structure},
           "description": f"Sentinel-1 {direction} backscatter VV, VH as the tiles' int16 encoding "
                          f"(400 x dB + 10000), standardised by value_scaling, then the raw day of year; "
                          f"ascending then descending steps, concatenated in time, form s1_x; {rule}",
           "value_scaling": _z_scores(mean, std)}
          for direction, mean, std in (("ascending", stats.s1_asc_mean, stats.s1_asc_std),
                                       ("descending", stats.s1_desc_mean, stats.s1_desc_std))]
    return [s2, *s1]


def _mlm_name(model: Mapping[str, Any]) -> str:
    """``TESSERA <family> <checkpoint stem>``, within MLM's name pattern."""
    stem = Path(str(model.get("name", "checkpoint"))).stem
    return re.sub(r"[^a-zA-Z0-9_.\- ]", "_", f"TESSERA {model['family']} {stem}").rstrip("_.- ") or "TESSERA"


def _framework_version() -> str | None:
    """The installed torch's ``X.Y.Z`` (no local build label), or None."""
    try:
        found = re.match(r"\d+\.\d+\.\d+", importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return found.group(0) if found else None


def mlm_properties(model: Mapping[str, Any], channels: int) -> dict[str, Any] | None:
    """MLM item properties for a model record (:func:`checkpoint_info` or the inference record).

    Returns None (with a warning) for a record without a known family and statistics set.
    """
    family, stats = FAMILIES.get(str(model.get("family"))), STATS.get(str(model.get("stats")))
    if family is None or stats is None:
        log.warning("the model record names no known family and statistics set: the STAC item gets no "
                    "MLM fields; re-run infer_all_tiles or pass --checkpoint")
        return None
    dim = int(model.get("embedding_dim") or channels)
    props: dict[str, Any] = {
        "mlm:name": _mlm_name(model),
        "mlm:architecture": f"{family.title}: S2 and S1 transformer encoders, {family.pooling} pooling over "
                            f"time, concatenated, {family.reducer} dim_reducer",
        "mlm:tasks": list(MLM_TASKS), "mlm:framework": "PyTorch",
        "mlm:input": mlm_inputs(family, stats),
        "mlm:output": [{"name": "embedding", "tasks": list(MLM_TASKS),
                        "result": {"shape": [-1, dim], "dim_order": ["batch", "channel"], "data_type": "float32"},
                        "description": f"{dim}-d embedding of each pixel: the bands A00 ... of the embedding asset "
                                       "(int8 exports: value x the per-pixel scale)"}],
    }
    if version := _framework_version():
        props["mlm:framework_version"] = version
    if isinstance(model.get("config"), dict) and model["config"]:
        props["mlm:hyperparameters"] = dict(model["config"])
    return props


def model_asset(model: Mapping[str, Any]) -> pystac.Asset:
    """The checkpoint as the MLM model asset: its name, input bands and recorded size and sha256.

    The checkpoint is not copied beside the item: its href is the file name, and ``file:checksum``
    identifies it.
    """
    extra: dict[str, Any] = {"mlm:artifact_type": "torch.save"}
    sha256 = model.get("sha256")
    if isinstance(sha256, str) and re.fullmatch(r"[0-9a-f]{64}", sha256):
        extra["file:checksum"] = sha256_multihash(sha256)
    else:
        log.warning("the model record holds no SHA-256 digest (%r): the STAC item cannot identify the checkpoint",
                    sha256)
    if isinstance(model.get("size_bytes"), int):
        extra["file:size"] = model["size_bytes"]
    name = str(model.get("name", "checkpoint.pt"))
    title = f"checkpoint {name}" + (f": {model['family_title']}" if model.get("family_title") else "")
    description = ("the weights the embedding was made with; not copied beside this item: find the file by its "
                   "file:checksum")
    asset = pystac.Asset("./" + name, title=title, description=description, media_type=CHECKPOINT_MEDIA_TYPE,
                         roles=["mlm:model", "mlm:weights"], extra_fields=extra)
    asset.extra_fields["eo:bands"] = (
        [Band.create(name=b, common_name=S2_COMMON_NAMES[b], description=f"Sentinel-2 L2A {b}").to_dict()
         for b in S2_BANDS]
        + [Band.create(name=b, description=f"Sentinel-1 {b} backscatter").to_dict() for b in S1_BANDS])
    return asset


def _model_fields(item: pystac.Item, model: Mapping[str, Any], channels: int) -> bool:
    """Add the MLM properties and the model asset to ``item``; False where the record is too old for MLM."""
    props = mlm_properties(model, channels)
    if props is None:
        return False
    item.properties.update(props)
    MLMExtension.add_to(item)
    EOExtension.add_to(item)  # the model asset's eo:bands name the input bands
    item.add_asset(MODEL_ASSET, model_asset(model))
    return True


def build_item(item_id: str, grid: Grid, provenance: Provenance, assets: Sequence[AssetSpec], item_path: Path,
               properties: Mapping[str, Any] | None = None,
               fallback_datetime: dt.datetime | None = None) -> pystac.Item:
    """A STAC item for the exported embedding: footprint, period, projection, assets, model, provenance.

    Every file asset gets ``file:size`` and ``file:checksum`` (the files are read once more for them).

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
    record = grid.to_record()
    proj.apply(code=f"EPSG:{epsg}" if epsg else None, wkt2=None if epsg else record["crs"], shape=record["shape"],
               transform=record["transform"], bbox=list(grid.bounds))
    for spec in assets:
        asset = pystac.Asset(_href(spec.path, item_path), title=spec.title, media_type=spec.media_type,
                             roles=list(spec.roles), extra_fields={**spec.extra, **file_fields(spec.path)})
        item.add_asset(spec.key, asset)
        if spec.bands is not None:
            _add_bands(asset, spec, grid.resolution[0])
    channels = next((s.bands[2] for s in assets if s.key == "embedding" and s.bands), 0)
    if provenance.model and _model_fields(item, provenance.model, channels):
        item.properties["btfm:model"] = {k: provenance.model[k] for k in BTFM_MODEL_KEYS if k in provenance.model}
    if any("file:checksum" in a.extra_fields for a in item.assets.values()):
        FileExtension.add_to(item)
    return item


def write_item(item: pystac.Item, path: str | os.PathLike[str]) -> Path:
    """Write an item as JSON (strict: no NaN), atomically; self link left out (hrefs are relative)."""
    path = Path(path)
    data = item.to_dict(include_self_link=False, transform_hrefs=False)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return path
