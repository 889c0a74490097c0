"""The run folder: where each step's inputs and outputs live, and the records of what made them.

A run folder (``main_pipeline.sh --data-dir``, by default the ROI's folder) holds, by step::

    roi.tiff                                   the ROI (0/1 GeoTIFF, 10 m)
    retiled_d_pixel/<x0>_<y0>_<x1>_<y1>/       preprocessing tiles (btfm_core.tiles)
    retiled_d_pixel/run_metadata.json          RunMetadata: written when every tile is done
    representation_retiled/<tile>.npy          per-tile embeddings (H, W, D) float32
    representation_retiled/inference.json      InferenceRecord: written before the first tile
    stitched_representation.npy (+ .json)      the stitched (H, W, D) map and its grid record
    stitched_representation.{tif,png,zarr,stac.json}   exports
    logs/<step>.log                            one log per step
    cache/                                     search answers, S1 downloads, day ranges of tiles written
                                               by cluster tasks (cache/tile_parts/; removed at the end)

:class:`RunLayout` is the only place these names are spelled. The two records carry a
``schema_version``; a reader refuses a record written by a newer BTFM (a field it does not know
could change what the numbers mean) and reads records of older versions (no version: 1).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from btfm_core.errors import InputDataError
from btfm_core.fileio import atomic_path

__all__ = ["CACHE_DIRNAME", "INFERENCE_RECORD_FILE", "LOGS_DIRNAME", "REPRESENTATION_DIRNAME", "ROI_FILE",
           "RUN_METADATA_FILE", "SCHEMA_VERSION", "STITCHED_STEM", "TILES_DIRNAME", "TILE_PARTS_DIRNAME",
           "InferenceRecord", "RunLayout", "RunMetadata", "RunRecordError", "finished_run_metadata",
           "shell_assignments"]

log = logging.getLogger(__name__)

#: Version of the records' layout; readers refuse a higher one.
SCHEMA_VERSION = 1
ROI_FILE = "roi.tiff"
TILES_DIRNAME = "retiled_d_pixel"
REPRESENTATION_DIRNAME = "representation_retiled"
STITCHED_STEM = "stitched_representation"
LOGS_DIRNAME = "logs"
CACHE_DIRNAME = "cache"
TILE_PARTS_DIRNAME = "tile_parts"
RUN_METADATA_FILE = "run_metadata.json"
INFERENCE_RECORD_FILE = "inference.json"


class RunRecordError(InputDataError):
    """A run record is missing, unreadable, or written by a newer BTFM."""


@dataclass(frozen=True)
class RunLayout:
    """Paths of one run folder (nothing is created or checked)."""

    root: Path

    @classmethod
    def around(cls, path: str | os.PathLike[str]) -> RunLayout:
        """The run folder that ``path`` belongs to: the folder itself, its tile or representation
        folder, or a file in the run folder (the stitched map, the ROI)."""
        path = Path(path)
        if path.name in (TILES_DIRNAME, REPRESENTATION_DIRNAME) or (path.suffix and not path.is_dir()):
            return cls(path.parent)
        return cls(path)

    @property
    def roi(self) -> Path:
        return self.root / ROI_FILE

    @property
    def tiles_dir(self) -> Path:
        return self.root / TILES_DIRNAME

    @property
    def representation_dir(self) -> Path:
        return self.root / REPRESENTATION_DIRNAME

    @property
    def run_metadata_file(self) -> Path:
        return self.tiles_dir / RUN_METADATA_FILE

    @property
    def inference_record_file(self) -> Path:
        return self.representation_dir / INFERENCE_RECORD_FILE

    @property
    def stitched_npy(self) -> Path:
        return self.stitched(".npy")

    def stitched(self, suffix: str) -> Path:
        """The stitched map or an export, by ``suffix``: ``.npy``, ``.tif``, ``.png``, ``.zarr``, ``.stac.json``."""
        return self.root / f"{STITCHED_STEM}{suffix}"

    @property
    def logs_dir(self) -> Path:
        return self.root / LOGS_DIRNAME

    @property
    def cache_dir(self) -> Path:
        """Search answers and downloads of a preprocessing run (``--keep-intermediate`` keeps them)."""
        return self.root / CACHE_DIRNAME

    @property
    def tile_parts_dir(self) -> Path:
        """Partial tiles (a day range each) that cluster tasks write and a last task joins (in the cache)."""
        return self.cache_dir / TILE_PARTS_DIRNAME

    def log_file(self, step: str) -> Path:
        """``logs/<step>.log`` (``preprocess``, ``stitch``, ...)."""
        return self.logs_dir / f"{step}.log"

    def run_metadata(self, strict: bool = True) -> RunMetadata | None:
        """The preprocessing record of this run (:func:`finished_run_metadata`)."""
        return finished_run_metadata(self.tiles_dir, strict)

    def inference_record(self) -> InferenceRecord | None:
        """What made this run's embeddings, or None (no record).

        Raises:
            RunRecordError: the file is there but unreadable or from a newer BTFM.
        """
        path = self.inference_record_file
        return InferenceRecord.read(path) if path.is_file() else None


def finished_run_metadata(tiles_dir: str | os.PathLike[str], strict: bool = True) -> RunMetadata | None:
    """The :class:`RunMetadata` in a tile folder (any name), or None while its run is unfinished (no file).

    Args:
        strict: raise on a record that is there but unusable; False: log a warning and return
            None (for steps that only use it as a hint: coverage, info, a rerun's "finished" check).

    Raises:
        RunRecordError: (``strict``) the file is unreadable or from a newer BTFM.
    """
    path = Path(tiles_dir) / RUN_METADATA_FILE
    if not path.is_file():
        return None
    try:
        return RunMetadata.read(path)
    except RunRecordError as exc:
        if strict:
            raise
        log.warning("%s; ignoring it", exc)
        return None


def _load(path: Path, what: str) -> dict[str, Any]:
    """A record file's JSON object, its schema version checked."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise RunRecordError(f"{what} {path} does not exist") from exc
    except (OSError, ValueError) as exc:
        raise RunRecordError(f"{what} {path} is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise RunRecordError(f"{what} {path} holds a {type(data).__name__}, expected a JSON object")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RunRecordError(f"{what} {path} has schema version {version!r}; this BTFM reads up to "
                             f"{SCHEMA_VERSION}: upgrade BTFM")
    return data


def _save(path: Path, data: Mapping[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str))
    return path


@dataclass(frozen=True)
class RunMetadata:
    """What a preprocessing run was asked for and found (``retiled_d_pixel/run_metadata.json``).

    Attributes:
        run_key: digest of the settings that decide the tiles' contents (a rerun must match it).
        roi: the ROI file given (a path on the machine that ran it).
        s2_period, s1_period: ``YYYY-MM-DD..YYYY-MM-DD``.
        max_cloud: scene cloud-cover limit, percent.
        tile_size: tile side, pixels.
        s2_scenes, s1_scenes: scenes the search found.
        s1_backscatter_recorded: the backscatter kinds the S1 scenes say they are.
        s2_notes: substitutions made (e.g. B8A from another band).
        sources: the sources' own description (``source``, ``s2_collection``, ``s1_source``, ...),
            stored flat beside the fields above; keys the fields do not name land here too.
    """

    run_key: str | None = None
    roi: str | None = None
    s2_period: str | None = None
    s1_period: str | None = None
    max_cloud: float | None = None
    tile_size: int | None = None
    s2_scenes: int | None = None
    s1_scenes: int | None = None
    s1_backscatter_recorded: tuple[str, ...] = ()
    s2_notes: tuple[str, ...] = ()
    sources: Mapping[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object: the sources flat, then the fields (those not known left out)."""
        out: dict[str, Any] = dict(self.sources)
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "sources" and value is not None:
                out[item.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunMetadata:
        """Parse the file's object; missing fields are None (records of older versions name fewer)."""
        names = {item.name for item in fields(cls)} - {"sources"}
        known: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        known.setdefault("schema_version", 1)
        return cls(**known, sources={k: v for k, v in data.items() if k not in names})

    def get(self, key: str, default: Any = None) -> Any:
        """A recorded value by its key in the file (a field, or one of the sources' keys)."""
        value = self.to_json().get(key)
        return default if value is None else value

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the record atomically to ``path`` (``RunLayout.run_metadata_file``)."""
        return _save(Path(path), self.to_json())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> RunMetadata:
        """Read ``path``.

        Raises:
            RunRecordError: missing, not a JSON object, or from a newer BTFM.
        """
        return cls.from_json(_load(Path(path), "run metadata"))


@dataclass(frozen=True)
class InferenceRecord:
    """What decides the values of a representation folder's embeddings (``inference.json``).

    Attributes:
        model: checkpoint name, sha256, size, config, family, embedding_dim (written), stats,
            input rule and int8 rule.
        seed, repeat: the sampling draw, or ``"not applicable"`` for families without one.
        precision: ``fp32``, ``bf16`` or ``int8``.
    """

    model: Mapping[str, Any]
    seed: int | str
    repeat: int | str
    precision: str
    schema_version: int = SCHEMA_VERSION

    #: The model fields that name a different embedding when they differ.
    IDENTITY_KEYS = ("name", "sha256", "family", "embedding_dim", "stats")

    def to_json(self) -> dict[str, Any]:
        return {"model": dict(self.model), "seed": self.seed, "repeat": self.repeat, "precision": self.precision,
                "schema_version": self.schema_version}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | os.PathLike[str] = "") -> InferenceRecord:
        """Parse a record.

        Raises:
            RunRecordError: a field is missing or of the wrong kind.
        """
        if not isinstance(data.get("model"), Mapping) or not isinstance(data.get("precision"), str):
            raise RunRecordError(f"inference record {path} has no model or precision; it is not one this BTFM "
                                 "wrote (delete it with the folder's tiles to start again)")
        return cls(dict(data["model"]), data.get("seed", "not applicable"), data.get("repeat", "not applicable"),
                   data["precision"], int(data.get("schema_version", 1)))

    def same_embeddings(self, other: InferenceRecord) -> bool:
        """Whether both records make the same embeddings (the schema version aside)."""
        return (dict(self.model), self.seed, self.repeat, self.precision) == \
            (dict(other.model), other.seed, other.repeat, other.precision)

    def differences(self, before: InferenceRecord) -> str:
        """What differs from ``before``, as ``key: before -> now`` (at most three)."""
        def flat(record: InferenceRecord) -> dict[str, Any]:
            return {**{f"model {k}": record.model.get(k) for k in self.IDENTITY_KEYS},
                    "seed": record.seed, "repeat": record.repeat, "precision": record.precision}

        old, new = flat(before), flat(self)
        changes = [f"{k}: {old[k]} -> {new[k]}" for k in new if old[k] != new[k]]
        return "; ".join(changes[:3]) or "settings differ"

    def write(self, path: str | os.PathLike[str]) -> Path:
        return _save(Path(path), self.to_json())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> InferenceRecord:
        """Read ``path``.

        Raises:
            RunRecordError: missing, unreadable, from a newer BTFM, or not an inference record.
        """
        return cls.from_json(_load(Path(path), "inference record"), path)


def shell_assignments(root: str | os.PathLike[str]) -> str:
    """``NAME=path`` lines (shell-quoted) of a run folder's paths, for the bash drivers:
    ``eval "$(python -m btfm_core.run RUN_DIR)"`` sets ROI, TILES_DIR, REPRESENTATION_DIR,
    STITCHED_NPY, STITCHED_TIF and LOGS_DIR."""
    run = RunLayout(Path(root))
    paths = {"ROI": run.roi, "TILES_DIR": run.tiles_dir, "REPRESENTATION_DIR": run.representation_dir,
             "STITCHED_NPY": run.stitched_npy, "STITCHED_TIF": run.stitched(".tif"), "LOGS_DIR": run.logs_dir}
    return "\n".join(f"{name}={shlex.quote(str(path))}" for name, path in paths.items())


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        print("usage: python -m btfm_core.run RUN_DIR   (prints the run folder's paths as shell assignments)",
              file=sys.stderr)
        sys.exit(2)
    print(shell_assignments(sys.argv[1]))
