"""Export a stitched (H, W, 128) embedding on the ROI grid: COG, Zarr, quick-look PNG and STAC item.

- GeoTIFF (default): a Cloud-Optimised GeoTIFF, one band per embedding dimension (``A00`` …
  ``A127``), float32 with NaN outside the ROI, or ``--dtype int8`` (-128 outside) plus
  ``<out>_scales.tif`` with one float32 scale per pixel (``embedding = value x scale``); see
  :mod:`btfm_infer.export_cog`.
- ``--zarr PATH``: the same embedding as a CF-conventional Zarr store (v2, GDAL-readable; v3 sharded with
  ``--zarr-sharding``); see :mod:`btfm_infer.export_zarr`.
- a PCA quick-look PNG (:mod:`btfm_infer.quicklook`) and a STAC item listing every output with
  the projection, raster, EO, file and MLM extensions and the run's provenance (:mod:`btfm_infer.stac_item`).

Each output records the digest of its inputs and settings (:mod:`btfm_infer.export_set`), so a rerun
keeps what is current, finishes a partial set and refuses (without ``--overwrite``) what is not.

Every writer streams blocks from the memory-mapped ``.npy``, so memory use does not grow with the
ROI, and every output appears under its final name only when complete.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pystac

from btfm_core.cli import (
    HelpFormatter,
    add_log_file_option,
    add_overwrite_option,
    add_seed_option,
    add_standard_options,
    entry_point,
    prog_name,
)
from btfm_core.errors import BTFMError, InputDataError
from btfm_core.fileio import check_free_space, disk_full_as_error, ensure_writable_dir, remove_stale_temporaries
from btfm_core.locking import folder_lock
from btfm_core.logs import setup_logging
from btfm_core.roi import Roi, open_roi
from btfm_core.run import RunLayout, RunMetadata, RunRecordError
from btfm_infer.embedding_map import EmbeddingMap
from btfm_infer.export_cog import CogExport, scales_path, write_embedding_cog
from btfm_infer.export_common import INT8_NODATA, CosineStats, band_names, quantise_int8
from btfm_infer.export_set import (
    INPUTS_ATTRIBUTE,
    INPUTS_TAG,
    OutputState,
    existing_cog,
    existing_zarr,
    export_inputs_digest,
    output_state,
    refuse_stale,
)
from btfm_infer.export_zarr import ZarrExport, write_embedding_zarr
from btfm_infer.quicklook import DEFAULT_MAX_SIZE, write_quicklook_png
from btfm_infer.stac_item import (
    AssetSpec,
    Provenance,
    build_item,
    build_provenance,
    checkpoint_info,
    find_inference_model,
    write_item,
)

__all__ = ["INT8_NODATA", "band_names", "main", "quantise_int8", "scales_path", "write_embedding_geotiff"]

log = logging.getLogger(__name__)


def write_embedding_geotiff(npy_path: str | os.PathLike[str], roi: Roi | str | os.PathLike[str],
                            out_path: str | os.PathLike[str], dtype: str = "float32") -> Path:
    """Write a stitched embedding as a float32 (or int8 + scale) COG on the ROI grid.

    See :func:`btfm_infer.export_cog.write_embedding_cog` (this keeps the older signature).

    Returns:
        ``out_path``.
    """
    return write_embedding_cog(npy_path, roi, out_path, dtype).path


def _embedding_properties(channels: int, dtype: str, cosine: CosineStats | None,
                          int8_rule: str = "v1.0") -> dict[str, object]:
    info: dict[str, object] = {"dim": channels, "dtype": dtype, "band_names": f"{band_names(channels)[0]}.."
                               f"{band_names(channels)[-1]}"}
    if dtype == "int8":
        info["quantisation"] = "per-pixel symmetric int8: embedding = value x scale, scale = max|v| / 127"
        info["int8_rule"] = int8_rule
        info["nodata"] = INT8_NODATA
        if cosine is not None:
            info["int8_cosine"] = cosine.as_dict()
    return {"btfm:embedding": info}


def _assets(cog: CogExport | None, zarr_out: ZarrExport | None, png: Path | None,
            channels: int) -> list[AssetSpec]:
    assets: list[AssetSpec] = []
    if cog is not None:
        nodata: float | int | str = INT8_NODATA if cog.dtype == "int8" else "nan"
        assets.append(AssetSpec("embedding", cog.path, pystac.MediaType.COG, ["data"],
                                f"BTFM embedding, {channels} bands {cog.dtype}", (cog.dtype, nodata, channels),
                                {"btfm:scale_asset": "scales"} if cog.scales else {}))
        if cog.scales is not None:
            assets.append(AssetSpec("scales", cog.scales, pystac.MediaType.COG, ["data"],
                                    "per-pixel scale of the int8 embedding (embedding = value x scale)",
                                    ("float32", "nan", 1)))
    if zarr_out is not None:
        arrays = ["embedding", "scales"] if zarr_out.dtype == "int8" else ["embedding"]
        assets.append(AssetSpec("zarr", zarr_out.path, pystac.MediaType.ZARR, ["data"],
                                f"BTFM embedding, Zarr v{zarr_out.layout.zarr_format} (y, x, band) {zarr_out.dtype}",
                                None, {"btfm:arrays": arrays, **{f"btfm:{key}": value for key, value
                                                                 in zarr_out.layout.as_dict(channels).items()}}))
    if png is not None:
        assets.append(AssetSpec("quicklook", png, pystac.MediaType.PNG, ["overview"],
                                "quick-look: first three principal components as RGB"))
    return assets


def _provenance(args: argparse.Namespace, npy: Path) -> Provenance:
    meta_path: Path | None = None
    if args.run_metadata is not None:
        meta_path = args.run_metadata.expanduser()
        if not meta_path.is_file():
            raise InputDataError(f"run metadata {meta_path} does not exist; check --run-metadata")
    elif not args.no_run_metadata and RunLayout.around(npy).run_metadata_file.is_file():
        meta_path = RunLayout.around(npy).run_metadata_file
    try:
        meta = RunMetadata.read(meta_path) if meta_path else None
    except RunRecordError as exc:
        raise InputDataError(f"{exc}; pass --run-metadata with the run_metadata.json of the preprocessing run, "
                             "or --no-run-metadata") from exc
    if meta_path:
        log.info("provenance from %s", meta_path)
    model = checkpoint_info(args.checkpoint.expanduser()) if args.checkpoint else find_inference_model(npy)
    return build_provenance(meta, model)


def build_parser() -> argparse.ArgumentParser:
    """Command line of the export step."""
    parser = argparse.ArgumentParser(
        prog=prog_name("btfm_infer.convert_npy2tiff"),
        description="Export a stitched (H, W, 128) embedding .npy on the ROI grid: a 128-band Cloud-Optimised "
                    "GeoTIFF (float32, NaN outside the ROI; or int8 + per-pixel scale), optionally a Zarr "
                    "store, an RGB quick-look PNG of its first three principal components, and a STAC item "
                    "listing them with the run's provenance (sources, period, checkpoint).",
        formatter_class=HelpFormatter,
        epilog="examples:\n"
               "  python btfm_infer/convert_npy2tiff.py --npy my_data/stitched_representation.npy \\\n"
               "      --ref-tiff my_data/roi.tiff --out my_data/stitched_representation.tif\n"
               "  python btfm_infer/convert_npy2tiff.py --npy emb.npy --ref-tiff roi.tiff --out emb.tif \\\n"
               "      --dtype int8 --zarr emb.zarr --checkpoint checkpoints/btfm_demo.pt --overwrite\n"
               "  python btfm_infer/convert_npy2tiff.py --npy emb.npy --ref-tiff roi.tiff --no-tiff \\\n"
               "      --zarr emb.zarr --no-png --no-stac\n",
    )
    parser.add_argument("--npy", type=Path, required=True, help="the stitched (H, W, 128) embedding")
    parser.add_argument("--ref-tiff", "--roi", dest="ref_tiff", type=Path, required=True,
                        help="the ROI GeoTIFF (grid, CRS and inside mask)")
    out = parser.add_argument_group("outputs")
    tiff = out.add_mutually_exclusive_group()
    tiff.add_argument("--out", type=Path, default=None,
                      help="Cloud-Optimised GeoTIFF to write (default: --npy with a .tif suffix)")
    tiff.add_argument("--no-tiff", action="store_true", help="write no GeoTIFF (needs --zarr)")
    out.add_argument("--zarr", type=Path, default=None,
                     help="also write a Zarr store (a folder, e.g. emb.zarr) that xarray/rioxarray and GDAL >= 3.9 "
                          "(QGIS) open georeferenced: Zarr v2, array 'embedding' (y, x, band) in 128 x 128 px "
                          "chunks of all bands, int8 adds 'scales'; GDAL: ZARR:\"emb.zarr\":/embedding")
    out.add_argument("--zarr-sharding", action="store_true",
                     help="write the --zarr store as Zarr v3 with 32 x 32 px chunks in 256 x 256 px shards (far "
                          "fewer files); readable by zarr-python >= 3 / xarray, not by GDAL < 3.13 (rasterio 1.4 "
                          "wheels bundle 3.10) nor a QGIS built on it")
    out.add_argument("--dtype", choices=["float32", "int8"], default="float32",
                     help="int8: 4x smaller, quantised per pixel with a float32 scale (GeoTIFF: <out>_scales.tif, "
                          "Zarr: array 'scales'; embedding = value x scale), as geotessera stores them; the "
                          "reconstruction cosine is logged and recorded")
    png = out.add_mutually_exclusive_group()
    png.add_argument("--png", type=Path, default=None,
                     help="quick-look PNG to write (default: the GeoTIFF or Zarr path with a .png suffix)")
    png.add_argument("--no-png", action="store_true", help="do not write a quick-look PNG")
    stac = out.add_mutually_exclusive_group()
    stac.add_argument("--stac", type=Path, default=None,
                      help="STAC item to write (default: the GeoTIFF or Zarr path with a .stac.json suffix)")
    stac.add_argument("--no-stac", action="store_true", help="do not write a STAC item")
    prov = parser.add_argument_group("provenance (GeoTIFF tags, Zarr attributes, STAC properties)")
    prov.add_argument("--checkpoint", type=Path, default=None,
                      help="the checkpoint the embedding was made with: its name, sha256 and dimensions are "
                           "recorded (loads it); default: what infer_all_tiles recorded in "
                           "representation_retiled/inference.json beside --npy")
    meta = prov.add_mutually_exclusive_group()
    meta.add_argument("--run-metadata", type=Path, default=None,
                      help="preprocessing run_metadata.json (sources, collections, backscatter kind, periods); "
                           "default: retiled_d_pixel/run_metadata.json beside --npy, when it exists")
    meta.add_argument("--no-run-metadata", action="store_true", help="record no run metadata")
    parser.add_argument("--max-size", type=int, default=DEFAULT_MAX_SIZE,
                        help="longest side of the quick-look in pixels")
    add_seed_option(parser, "seed of the quick-look's PCA pixel sample")
    add_overwrite_option(parser)
    add_log_file_option(parser, "logs/npy2tiff.log beside the first output")
    add_standard_options(parser)
    return parser


def _resolve(path: Path | None) -> Path | None:
    return None if path is None else path.expanduser().resolve()


@dataclass(frozen=True)
class ExportPaths:
    """The outputs one export writes (None: not asked for); ``base`` names the logs and defaults."""

    npy: Path
    tif: Path | None
    scales: Path | None
    zarr: Path | None
    png: Path | None
    stac: Path | None

    @property
    def base(self) -> Path:
        base = self.tif or self.zarr
        assert base is not None
        return base

    def flags(self) -> dict[str, Path]:
        """The outputs by the flag that chooses them (for messages)."""
        named = {"--out": self.tif, "<out>_scales.tif": self.scales, "--zarr": self.zarr, "--png": self.png,
                 "--stac": self.stac}
        return {flag: path for flag, path in named.items() if path is not None}


def _paths(args: argparse.Namespace) -> ExportPaths:
    if args.no_tiff and args.zarr is None:
        raise BTFMError("--no-tiff leaves nothing to write; add --zarr PATH or drop --no-tiff")
    if args.zarr_sharding and args.zarr is None:
        raise BTFMError("--zarr-sharding sets the layout of the --zarr store; add --zarr PATH or drop --zarr-sharding")
    npy = args.npy.expanduser().resolve()
    tif = None if args.no_tiff else _resolve(args.out) or npy.with_suffix(".tif")
    zarr_path = _resolve(args.zarr)
    base = tif or zarr_path
    assert base is not None
    paths = ExportPaths(npy, tif, scales_path(tif) if tif is not None and args.dtype == "int8" else None, zarr_path,
                        None if args.no_png else _resolve(args.png) or base.with_suffix(".png"),
                        None if args.no_stac else _resolve(args.stac) or base.with_suffix(".stac.json"))
    written = list(paths.flags().values())
    if npy in written or len(set(written)) != len(written):
        raise BTFMError("--npy, --out (and its _scales.tif), --zarr, --png and --stac must all be different paths")
    return paths


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Export the outputs and print their paths, one a line. Exit 0 on success, 2 on bad input.

    Outputs that exist and were made from the same inputs and settings are kept, so a rerun
    finishes an interrupted set and a complete set is left as it is; an output made from other
    inputs is replaced only with ``--overwrite``.
    """
    args = build_parser().parse_args(argv)
    setup_logging(None, args.verbosity)
    if args.max_size < 1:
        raise BTFMError(f"--max-size must be >= 1, got {args.max_size}")
    paths = _paths(args)
    roi = open_roi(args.ref_tiff.expanduser())
    emap = EmbeddingMap.open(paths.npy, roi)  # fail before writing anything
    height, width, channels = emap.shape
    for path in paths.flags().values():
        ensure_writable_dir(path.parent, f"output folder of {path.name}")
    log_file = (args.log_file or RunLayout(paths.base.parent).log_file("npy2tiff")).expanduser()
    ensure_writable_dir(log_file.parent, "log folder (--log-file)")
    setup_logging(log_file, args.verbosity)
    with folder_lock(paths.base.parent, "export"):
        for path in paths.flags().values():
            remove_stale_temporaries(path.parent, names=[path.name])
        provenance = _provenance(args, paths.npy)
        digests = _digests(args, paths, provenance)
        todo = _outputs_to_write(paths, digests, args.overwrite)
        check_free_space(paths.base.parent, _export_bytes(height * width, channels, args.dtype, todo, paths),
                         "the export (uncompressed size, an upper bound)")
        _export(args, paths, emap, provenance, digests, todo)
    for path in paths.flags().values():
        print(path)
    return 0


def _digests(args: argparse.Namespace, paths: ExportPaths, provenance: Provenance) -> dict[Path, str]:
    """Each output's inputs digest (see :mod:`btfm_infer.export_set`)."""
    recorded = provenance.attributes()
    roi = args.ref_tiff.expanduser()
    rule = str(provenance.model.get("int8_rule", "v1.0"))
    digests: dict[Path, str] = {}
    for path, settings in ((paths.tif, {"kind": "cog", "dtype": args.dtype, "rule": rule}),
                           (paths.zarr, {"kind": "zarr", "dtype": args.dtype, "rule": rule,
                                         "sharding": args.zarr_sharding}),
                           (paths.png, {"kind": "png", "max_size": args.max_size, "seed": args.seed})):
        if path is not None:
            digests[path] = export_inputs_digest(paths.npy, roi, recorded, **settings)
    if paths.scales is not None and paths.tif is not None:
        digests[paths.scales] = digests[paths.tif]
    if paths.stac is not None:
        assets = {str(path): digests[path] for path in (paths.tif, paths.zarr, paths.png) if path is not None}
        digests[paths.stac] = export_inputs_digest(paths.npy, roi, recorded, kind="stac", assets=assets)
    return digests


def _outputs_to_write(paths: ExportPaths, digests: dict[Path, str], overwrite: bool) -> set[Path]:
    """The outputs that are missing or (with ``overwrite``) stale; refuses stale ones without it.

    The GeoTIFF and its scales are one unit, and the STAC item is rewritten whenever an output it
    lists is.
    """
    states = {path: output_state(path, digests[path]) for path in paths.flags().values()}
    for flag, path in paths.flags().items():
        if states[path] is OutputState.STALE and not overwrite:
            refuse_stale(path, flag)
    todo = {path for path, state in states.items() if state is not OutputState.CURRENT}
    if paths.scales is not None and paths.tif is not None and todo & {paths.tif, paths.scales}:
        todo |= {paths.tif, paths.scales}
    if paths.stac is not None and todo - {paths.stac}:
        todo.add(paths.stac)
    kept = sorted(str(p) for p in paths.flags().values() if p not in todo)
    if kept and todo:
        log.info("kept %d output(s) made from the same inputs: %s", len(kept), ", ".join(kept))
    elif not todo:
        log.info("every output is complete and made from these inputs; nothing to do (pass --overwrite to redo)")
    return todo


def _export_bytes(pixels: int, channels: int, dtype: str, todo: set[Path], paths: ExportPaths) -> int:
    """Bytes the outputs still to write take at most, uncompressed (overviews add a third to a GeoTIFF)."""
    per_pixel = channels * (1 if dtype == "int8" else 4) + (4 if dtype == "int8" else 0)
    total = 0
    if paths.tif is not None and paths.tif in todo:
        total += pixels * per_pixel * 4 // 3
    if paths.zarr is not None and paths.zarr in todo:
        total += pixels * per_pixel
    return total


def _export(args: argparse.Namespace, paths: ExportPaths, emap: EmbeddingMap, provenance: Provenance,
            digests: dict[Path, str], todo: set[Path]) -> None:
    """Write the outputs in ``todo`` (the folder lock held); the others are read back for the STAC item."""
    int8_rule = str(provenance.model.get("int8_rule", "v1.0"))
    if args.dtype == "int8" and todo & {paths.tif, paths.zarr}:
        log.info("int8 rule of the %s family (%s)", provenance.model.get("family", "v1.0"),
                 "from the inference record" if provenance.model else "no model recorded: ours")
    cog = zarr_out = None
    if paths.tif is not None:
        with disk_full_as_error(paths.tif):
            cog = (write_embedding_cog(emap, None, paths.tif, args.dtype, int8_rule=int8_rule,
                                       tags={**provenance.tags(), INPUTS_TAG: digests[paths.tif]})
                   if paths.tif in todo else existing_cog(paths.tif, args.dtype))
    if paths.zarr is not None:
        with disk_full_as_error(paths.zarr):
            zarr_out = (write_embedding_zarr(emap, None, paths.zarr, args.dtype, int8_rule=int8_rule,
                                             sharding=args.zarr_sharding,
                                             attributes={**provenance.attributes(),
                                                         INPUTS_ATTRIBUTE: digests[paths.zarr]})
                        if paths.zarr in todo else existing_zarr(paths.zarr, args.dtype))
    if paths.png is not None and paths.png in todo:
        with disk_full_as_error(paths.png):
            write_quicklook_png(emap, None, paths.png, max_size=args.max_size, seed=args.seed,
                                tags={INPUTS_TAG: digests[paths.png]})
    if paths.stac is not None and paths.stac in todo:
        with disk_full_as_error(paths.stac):
            _write_stac(args, paths, emap.roi, emap.channels, provenance, digests[paths.stac], cog, zarr_out)


def _write_stac(args: argparse.Namespace, paths: ExportPaths, roi: Roi, channels: int, provenance: Provenance,
                digest: str, cog: CogExport | None, zarr_out: ZarrExport | None) -> None:
    assert paths.stac is not None
    int8_rule = str(provenance.model.get("int8_rule", "v1.0"))
    cosine = (cog.cosine if cog else None) or (zarr_out.cosine if zarr_out else None)
    fallback = None
    if provenance.start is None:
        fallback = dt.datetime.fromtimestamp(paths.npy.stat().st_mtime, dt.timezone.utc).replace(microsecond=0)
        log.warning("no run metadata with the observation period: the STAC item's datetime is the time %s "
                    "was written; pass --run-metadata to record the period", paths.npy.name)
    properties = {**_embedding_properties(channels, args.dtype, cosine, int8_rule), INPUTS_ATTRIBUTE: digest}
    item = build_item(paths.base.stem, roi.grid, provenance, _assets(cog, zarr_out, paths.png, channels),
                      paths.stac, properties, fallback_datetime=fallback)
    write_item(item, paths.stac)


if __name__ == "__main__":
    sys.exit(main())
