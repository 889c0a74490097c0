"""Which outputs of an export are already done: each output records the inputs it was made from.

An export writes a set of files (GeoTIFF and its int8 scales, Zarr store, quick-look PNG, STAC
item). Every one of them carries a digest of what decides its bytes (the stitched ``.npy``'s
content, the ROI, the provenance and the output's own settings) inside itself: a GeoTIFF or PNG
tag, a Zarr attribute, a STAC property. So a rerun of the same command can tell, for each output
that exists, whether it is complete and current (kept), made from other inputs (refused without
``--overwrite``) or missing (written); a run killed between two outputs is finished by the next
run without ``--overwrite``, and a run over a complete set does nothing.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from btfm_core.errors import BTFMError
from btfm_core.fileio import file_digest
from btfm_infer.export_cog import CogExport, scales_path
from btfm_infer.export_common import CosineStats
from btfm_infer.export_zarr import ZarrExport, read_layout

log = logging.getLogger(__name__)

__all__ = ["INPUTS_ATTRIBUTE", "INPUTS_TAG", "OutputState", "existing_cog", "existing_zarr", "export_inputs_digest",
           "output_state", "recorded_digest", "refuse_stale"]

#: GeoTIFF / PNG tag holding the digest of an output's inputs.
INPUTS_TAG = "BTFM_EXPORT_INPUTS"
#: Zarr attribute and STAC property holding the same digest.
INPUTS_ATTRIBUTE = "btfm:export_inputs"


class OutputState(enum.Enum):
    """What a rerun finds at an output's path."""

    MISSING = "missing"
    CURRENT = "current"
    STALE = "stale"


def export_inputs_digest(npy: Path, roi: Path, provenance: Mapping[str, Any], **settings: object) -> str:
    """Digest (sha256 hex) of what decides an output's bytes.

    Content only (no file times), so the same inputs give byte-identical outputs on every run.

    Args:
        npy: the stitched embedding (hashed in 1 MB chunks: one more read of it per export).
        roi: the ROI GeoTIFF.
        provenance: the recorded provenance (checkpoint, sources, period).
        settings: the output's own settings (dtype, quick-look size and seed...).
    """
    record = {"npy": npy_digest(npy), "roi": file_digest(roi), "provenance": provenance, "settings": settings}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=4)
def _cached_digest(path: Path, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def npy_digest(npy: Path) -> str:
    """sha256 of the stitched ``.npy``, computed once per process for a given size and modification time."""
    stat = npy.stat()
    return _cached_digest(npy, stat.st_size, stat.st_mtime_ns)


def recorded_digest(path: Path) -> str | None:
    """The inputs digest recorded inside an existing output (None: none, or unreadable)."""
    try:
        if path.suffix == ".json":
            properties = json.loads(path.read_text()).get("properties", {})
            return _as_digest(properties.get(INPUTS_ATTRIBUTE))
        if path.is_dir():
            import zarr

            return _as_digest(dict(zarr.open_group(str(path), mode="r").attrs).get(INPUTS_ATTRIBUTE))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the PNG has no georeference by design
            with rasterio.open(path) as src:
                return _as_digest(src.tags().get(INPUTS_TAG))
    except (OSError, ValueError, AttributeError, RasterioIOError, LookupError) as exc:
        log.debug("%s: no readable inputs record (%s)", path, exc)
        return None


def _as_digest(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def output_state(path: Path, digest: str) -> OutputState:
    """Whether ``path`` is missing, made from these inputs (``digest``), or from others."""
    if not os.path.lexists(path):
        return OutputState.MISSING
    return OutputState.CURRENT if recorded_digest(path) == digest else OutputState.STALE


def refuse_stale(path: Path, flag: str) -> None:
    """The error for an output that exists but was made from other inputs or settings."""
    raise BTFMError(f"output {path} already exists; pass --overwrite to replace it (it was made from other inputs "
                    f"or settings, or by an older version), or choose another {flag}")


def existing_cog(path: Path, dtype: str) -> CogExport:
    """What an earlier run's :func:`~btfm_infer.export_cog.write_embedding_cog` wrote at ``path``."""
    if dtype != "int8":
        return CogExport(path, None, dtype, None)
    with rasterio.open(path) as src:
        tags = src.tags()
    cosine = CosineStats.from_dict({"mean": tags["BTFM_INT8_COSINE_MEAN"], "min": tags["BTFM_INT8_COSINE_MIN"],
                                    "pixels": tags.get("BTFM_INT8_COSINE_PIXELS", 0)})
    return CogExport(path, scales_path(path), dtype, cosine)


def existing_zarr(path: Path, dtype: str) -> ZarrExport:
    """What an earlier run's :func:`~btfm_infer.export_zarr.write_embedding_zarr` wrote at ``path``."""
    import zarr

    summary = dict(zarr.open_group(str(path), mode="r").attrs).get("int8_cosine") if dtype == "int8" else None
    return ZarrExport(path, dtype, CosineStats.from_dict(summary) if isinstance(summary, dict) else None,
                      layout=read_layout(path))
