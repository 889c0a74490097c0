"""Preprocessing rehearsal at the issue's size, side by side with odc-stac (``make bench-preprocessing``).

A synthetic S2 L2A + S1 RTC dataset at the 31N/32N zone edge (``bench_preprocessing_data.py``:
COGs with 1024-px blocks and deflate, cached under ``--data``) is served by
:class:`btfm_core.loopback.LoopbackServer` with a static STAC catalog. Each run is its own
process: ours in one process, with ``--dask-local 1`` and ``--dask-local 2``, and on the 4x area
ROI; then ``odc.stac.load`` on the same items, bands, days and grid (bilinear, SCL nearest,
``groupby="solar_day"``, dask chunks of one tile and one day streamed to ``.npy`` files). Printed
per run: wall time per step and in all, bytes the server sent (file bodies, both readers counted
alike), peak RSS (per worker), disk written, and the server's own CPU time. Then pixel agreement:
our tiles against odc-stac's reads, once with our mosaicking rule applied to odc-stac's
per-granule reads (must be exact), once against odc-stac's own mosaic (differences explained).
Benchmark figures, not tests: they depend on the machine and its load.

Usage: python scripts/bench_preprocessing.py [--scale issue|small|tiny] [--data DIR] [--runs local,dask1,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit

import bench_preprocessing_data as data
import numpy as np
import pystac
import rasterio
from pyproj import Transformer

from btfm_core.cli import entry_point
from btfm_core.errors import BTFMError
from btfm_core.grid import Grid
from btfm_core.loopback import LoopbackServer
from btfm_core.roi import open_roi
from btfm_core.run import RunLayout
from btfm_core.tiles import S2_BANDS, TileId, read_tile, read_tile_metadata
from btfm_preprocessing.encoding import encode_s1_db, harmonise_reflectance, has_boa_offset, scl_valid_mask
from btfm_preprocessing.mosaic import S2Granule, mosaic_s2
from btfm_preprocessing.sources import EARTH_SEARCH_S2_ASSETS

REPO_ROOT = Path(__file__).resolve().parents[1]
#: odc-stac band names in the order of ``bands.npy``, then SCL.
S2_KEYS = [EARTH_SEARCH_S2_ASSETS[band] for band in S2_BANDS] + ["scl"]
S1_KEYS = ["vv", "vh"]
#: UTM zone of the ROI (the pipeline's grid); granules of the other zone are read across zones.
ROI_ZONE = "31N"
#: run name -> (label, ROI area factor, pipeline flags); "odc" is the peer.
RUNS: dict[str, tuple[str, int, list[str]]] = {
    "local": ("ours, 1 process", 1, []),
    # one read thread per worker: a process with --workers 4 already keeps both cores of our machine busy, so
    # the scaling from 1 to 2 workers is measured with workers that use one core each
    "dask1": ("ours, --dask-local 1 --workers 1", 1, ["--dask-local", "1", "--workers", "1"]),
    "dask2": ("ours, --dask-local 2 --workers 1", 1, ["--dask-local", "2", "--workers", "1"]),
    "area4": ("ours, 1 process, 4x area", 4, []),
    "odc": (f"odc-stac {version('odc-stac')} (peer)", 1, []),
}
#: Why odc-stac's cross-zone reads differ from the plain bilinear (found with this rehearsal; see the issue 12 note).
CROSS_ZONE_NOTE = (
    "  32N granules: the arbiter is a NumPy 2x2 bilinear at pyproj's exact coordinates of every target pixel "
    "(pixels whose four neighbours are all data). odc-stac calls rasterio.warp.reproject with GDAL's defaults: "
    "between zones GDAL estimates a source/target scale just under 1 per warp chunk and widens its bilinear kernel "
    "by it (its 10 m bands, which then depend on the chunking), and approximates the transform to 0.125 px (its 20 m "
    "bands, by a few DN where the sample point moves). Ours did the same "
    "until this rehearsal found it; btfm_preprocessing.reader now fixes the scale at 1 (XSCALE/YSCALE, the source "
    "is never finer than the 10 m target) and asks for the exact transform between CRSs.",)
STEPS = ("start", "plan", "read+write", "finish")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ [\w.]+: (.*)$")


class BenchError(BTFMError):
    """A rehearsal run failed; the message names its log."""


@dataclass
class Row:
    """The figures of one run."""

    label: str
    roi_px: int
    tiles: int
    measured: Measured
    steps: dict[str, float]
    worker_rss_mb: list[float]
    disk_bytes: int
    reader_bytes: int | None = None  # what the reader itself says it fetched (GDAL's network statistics)


def machine_cpu_s() -> float:
    """CPU seconds all processes of the machine have used since boot (``/proc/stat``; 0 where there is none)."""
    stat = Path("/proc/stat")
    if not stat.is_file():
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in stat.read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process (the loopback server's threads, as the runs are subprocesses)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Measured:
    """What one subprocess took: start epoch, wall s, peak RSS MB (its own and its waited-for children's), bytes
    the server sent meanwhile, the server's CPU s, the CPU s of every other process on the machine, its own CPU s."""

    epoch: float
    wall_s: float
    peak_rss_mb: float
    bytes_read: int
    server_cpu_s: float
    others_cpu_s: float
    cpu_s: float = 0.0  # of the run itself (its process and waited-for children: Dask workers)


def run_measured(command: list[str], server: LoopbackServer, log: Path) -> Measured:
    """Run ``command`` (output to ``log``) and measure it.

    Raises:
        BenchError: the command failed.
    """
    sent, cpu, machine = server.total_bytes_served, own_cpu_s(), machine_cpu_s()
    started, epoch = time.perf_counter(), time.time()
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-5:])
        raise BenchError(f"{' '.join(command[:4])} ... exited {proc.returncode}; see {log}:\n{tail}")
    server_cpu = own_cpu_s() - cpu
    own = usage.ru_utime + usage.ru_stime
    others = machine_cpu_s() - machine - server_cpu - own
    return Measured(epoch, wall, usage.ru_maxrss / 1024, server.total_bytes_served - sent, server_cpu, max(others, 0),
                    own)


def dir_bytes(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def log_events(text: str) -> list[tuple[float, str]]:
    """(epoch, message) of every timestamped line of a pipeline log."""
    events = []
    for line in text.splitlines():
        match = LOG_TIME.match(line)
        if match:
            when = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((when, match.group(2)))
    return events


def pipeline_steps(text: str, epoch: float, wall: float) -> dict[str, float]:
    """Seconds of each step of a pipeline run, from its log: start (imports, Dask cluster), plan
    (search and S1 preparation), read+write (the tiles), finish (metadata, cluster shutdown, exit)."""
    events = log_events(text)
    planned = next(t for t, m in events if m.startswith("ROI "))
    searched = next(t for t, m in events if " S2 acquisition days" in m)
    tiles_done = max(t for t, m in events if re.match(r"tile \S+: ", m))
    marks = [epoch, planned, searched, tiles_done, epoch + wall]
    return {step: b - a for step, a, b in zip(STEPS, marks[:-1], marks[1:], strict=True)}


def run_ours(name: str, scale: data.Scale, catalog: Path, work: Path, server: LoopbackServer,
             workers: int) -> Row:
    """One pipeline run (``RUNS[name]``) in its own process and folder."""
    label, area, flags = RUNS[name]
    folder = work / name
    folder.mkdir()
    roi = data.write_roi(folder / "roi.tiff", scale, area)
    command = [sys.executable, "-m", "btfm_preprocessing.pipeline", str(roi), *data.period(scale), "1",
               "--source", "local", "--catalog", str(catalog), "--tile-size", str(scale.tile_px),
               "--workers", str(workers), "-q", *flags]
    done = run_measured(command, server, folder / "stdout.log")
    text = RunLayout(folder).log_file("preprocess").read_text()
    workers_rss = [float(mb) for mb in re.findall(r"; worker \S+: (\d+) MB", text)] or [done.peak_rss_mb]
    network = re.findall(r"read over the network: ([\d.]+) MB", text)
    tiles = RunLayout(folder).tiles_dir
    return Row(label, scale.roi_window(area)[2], len(list(tiles.glob("*_*_*_*"))), done,
               pipeline_steps(text, done.epoch, done.wall_s), workers_rss, dir_bytes(tiles),
               int(float(network[-1]) * 1e6) if network else None)


def planned_bytes(scale: data.Scale, catalog: Path, work: Path, area: int) -> float | None:
    """Bytes the pipeline's ``--dry-run`` says the ROI's reads need: every COG block its tiles touch, once."""
    folder = work / f"plan{area}"
    folder.mkdir()
    roi = data.write_roi(folder / "roi.tiff", scale, area)
    done = subprocess.run([sys.executable, "-m", "btfm_preprocessing.pipeline", str(roi), *data.period(scale), "1",
                           "--source", "local", "--catalog", str(catalog), "--tile-size", str(scale.tile_px),
                           "--dry-run", "-q"], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    found = re.search(r"reads will fetch: ([\d.]+) (B|kB|MB|GB|TB)", done.stdout)
    if found is None:
        return None
    return float(found.group(1)) * 1000 ** ("B", "kB", "MB", "GB", "TB").index(found.group(2))


# ------------------------------------------------------------------------------------------ odc-stac, the peer


def split_day_items(items: Sequence[pystac.Item]) -> list[pystac.Item]:
    """The S2 items of days with more than one granule."""
    days: dict[dt.date, list[pystac.Item]] = {}
    for item in items:
        days.setdefault(item.datetime.date(), []).append(item)
    return [item for group in days.values() if len(group) > 1 for item in group]


def odc_peer(catalog: Path, roi: Path, out: Path, threads: int, chunk: int, granules: bool) -> None:
    """odc-stac's load of the S2 and S1 items on the ROI grid, streamed to ``out/<kind>_<band>.npy``
    (T, H, W); ``out/peer.json`` gets the layers' days (or granule ids) and the step times (epochs).

    ``granules``: each S2 item of a two-granule day as its own layer (for the agreement check), no S1.
    """
    import dask
    import dask.array as da
    import odc.stac
    from odc.geo.geobox import GeoBox

    from btfm_preprocessing.reader import GDAL_COG_OPTIONS

    marks = {"imported": time.time()}
    odc.stac.configure_rio(cloud_defaults=True, **GDAL_COG_OPTIONS)  # the GDAL settings our reader uses
    items = list(pystac.read_file(str(catalog)).get_items(recursive=True))
    grid = open_roi(roi).grid
    geobox = GeoBox((grid.height, grid.width), grid.transform, grid.crs)
    s2 = sorted((i for i in items if i.collection_id == "sentinel-2-l2a"), key=lambda i: (i.datetime, i.id))
    s1 = [i for i in items if i.collection_id == "sentinel-1-rtc"]
    chunks = {"time": 1, "x": chunk, "y": chunk}
    loads = []
    if granules:
        for item in sorted(split_day_items(s2), key=lambda i: i.id):
            loads.append(("g", item.id, odc.stac.load([item], bands=S2_KEYS, geobox=geobox, chunks=chunks,
                                                      resampling={"*": "bilinear", "scl": "nearest"})))
    else:
        loads.append(("s2", "", odc.stac.load(s2, bands=S2_KEYS, geobox=geobox, groupby="solar_day", chunks=chunks,
                                              resampling={"*": "bilinear", "scl": "nearest"})))
        loads.append(("s1", "", odc.stac.load(s1, bands=S1_KEYS, geobox=geobox, groupby="solar_day", chunks=chunks,
                                              resampling="bilinear")))
    layers: dict[str, list[str]] = {}
    sources, targets = [], []
    for kind, item_id, ds in loads:
        layers.setdefault(kind, []).extend([item_id] if item_id else [str(t)[:10] for t in ds.time.values])
    for kind in layers:
        parts = [ds for k, _, ds in loads if k == kind]
        for band in parts[0].data_vars:
            array = da.concatenate([ds[band].data for ds in parts]) if len(parts) > 1 else parts[0][band].data
            sources.append(array)
            targets.append(np.lib.format.open_memmap(out / f"{kind}_{band}.npy", "w+", array.dtype, array.shape))
    marks["planned"] = time.time()
    with dask.config.set(scheduler="threads", num_workers=threads):
        da.store(sources, targets, lock=False)
    for target in targets:
        target.flush()
    marks["read"] = time.time()
    (out / "peer.json").write_text(json.dumps({"layers": layers, "marks": marks}))


def run_odc(scale: data.Scale, catalog: Path, work: Path, server: LoopbackServer, threads: int,
            granules: bool = False) -> Row:
    """The peer in its own process (``--odc-peer``); its row."""
    folder = work / ("odc_granules" if granules else "odc")
    folder.mkdir()
    roi = data.write_roi(folder / "roi.tiff", scale, 1)
    command = [sys.executable, str(Path(__file__).resolve()), "--odc-peer", str(catalog), str(roi), str(folder),
               "--odc-threads", str(threads), "--chunk", str(scale.tile_px), *(["--granules"] if granules else [])]
    done = run_measured(command, server, folder / "stdout.log")
    marks = json.loads((folder / "peer.json").read_text())["marks"]
    points = [done.epoch, marks["imported"], marks["planned"], marks["read"], done.epoch + done.wall_s]
    steps = {step: b - a for step, a, b in zip(STEPS, points[:-1], points[1:], strict=True)}
    return Row(RUNS["odc"][0], scale.roi_px, 0, done, steps, [done.peak_rss_mb], dir_bytes(folder))


# ------------------------------------------------------------------------------------------ pixel agreement


def taken_from(granules: Sequence[S2Granule]) -> np.ndarray:
    """(H, W) index of the granule each pixel of :func:`mosaic_s2` comes from (-1: none), by its rule: the first
    granule where the pixel is valid, else the first that covers it. For sorting the differences only."""
    source = np.full(granules[0].scl.shape, -1)
    valid_seen = np.zeros(source.shape, bool)
    for index, granule in enumerate(granules):
        bands = harmonise_reflectance(granule.bands, granule.boa_offset)
        valid = scl_valid_mask(granule.scl).astype(bool) & bands.any(axis=-1)
        source[(valid & ~valid_seen) | ((granule.scl != 0) & (source < 0))] = index
        valid_seen |= valid
    return source


@dataclass
class Agreement:
    """Counts of (pixel, day) pairs compared and differing, per quantity."""

    compared: dict[str, int] = field(default_factory=dict)
    differing: dict[str, int] = field(default_factory=dict)
    max_abs: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, ours: np.ndarray, theirs: np.ndarray, where: np.ndarray | None = None) -> None:
        """Compare (H, W[, C]) arrays at the pixels ``where`` (all if None); a pixel differs if any channel does."""
        delta = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
        delta = delta.max(axis=-1) if delta.ndim == 3 else delta
        if where is not None:
            delta = delta[where]
        self.compared[name] = self.compared.get(name, 0) + int(delta.size)
        self.differing[name] = self.differing.get(name, 0) + int(np.count_nonzero(delta))
        self.max_abs[name] = max(self.max_abs.get(name, 0), int(delta.max(initial=0)))

    def lines(self) -> list[str]:
        return [f"  {name}: {self.compared[name]:,} px-days compared, {self.differing[name]:,} differ "
                f"({100 * self.differing[name] / max(self.compared[name], 1):.3f} %), max |diff| {self.max_abs[name]}"
                for name in self.compared]


def peer_arrays(folder: Path, kind: str, keys: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """A peer run's layer names (days or granule ids) and its (T, H, W) arrays per band (memory-mapped)."""
    layers = json.loads((folder / "peer.json").read_text())["layers"].get(kind, [])
    return layers, {key: np.load(folder / f"{kind}_{key}.npy", mmap_mode="r") for key in keys}


def peer_read(arrays: dict[str, np.ndarray], index: int, window: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """One layer of the peer's S2 arrays in a tile window: (bands (H, W, 10) in ``bands.npy`` order, scl (H, W))."""
    bands = np.stack([arrays[key][(index, *window)] for key in S2_KEYS[:-1]], axis=-1)
    return bands, np.asarray(arrays["scl"][(index, *window)])


@dataclass(frozen=True)
class Peer:
    """The peer's reads: solar-day S2 and S1 layers, the two-granule days' granules, each S2 item's offset."""

    days: list[str]
    s2: dict[str, np.ndarray]
    granule_ids: list[str]
    granules: dict[str, np.ndarray]
    s1_days: list[str]
    s1: dict[str, np.ndarray]
    offsets: dict[str, bool]
    zones: dict[str, str]  # S2 item id -> its UTM zone ("31N", "32N")
    hrefs: dict[str, dict[str, str]]  # S2 item id -> band key -> local path of its COG (for the arbiter)


def source_coordinates(path: str, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Band 1 of the COG at ``path`` (float64) and the exact (column, row) in it of every pixel centre of
    ``grid`` (pyproj, no approximation), and the band's nodata."""
    with rasterio.open(path) as src:
        source, src_transform, src_crs, nodata = src.read(1).astype(np.float64), src.transform, src.crs, src.nodata
    cols, rows = np.meshgrid(np.arange(grid.width) + 0.5, np.arange(grid.height) + 0.5)
    x, y = Transformer.from_crs(grid.rasterio_crs, src_crs, always_xy=True).transform(*(grid.transform * (cols, rows)))
    col, row = ~src_transform * (x, y)
    return source, np.asarray(col), np.asarray(row), nodata


def plain_bilinear(path: str, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The arbiter of a cross-CRS read: the plain 2 x 2 bilinear at exact coordinates, rounded like
    GDAL (floor(v + 0.5)).

    Returns:
        (H, W) uint16 values and (H, W) bool: where all four neighbours are data (elsewhere GDAL
        re-weights the valid ones, which the comparison leaves out).
    """
    source, col, row, nodata = source_coordinates(path, grid)
    col, row = col - 0.5, row - 0.5  # from pixel-edge to pixel-centre coordinates
    c0, r0 = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    inside = (c0 >= 0) & (r0 >= 0) & (c0 + 1 < source.shape[1]) & (r0 + 1 < source.shape[0])
    c0, r0 = np.clip(c0, 0, source.shape[1] - 2), np.clip(r0, 0, source.shape[0] - 2)
    fx, fy = col - c0, row - r0
    corners = [source[r0, c0], source[r0, c0 + 1], source[r0 + 1, c0], source[r0 + 1, c0 + 1]]
    valid = inside & np.all([corner != nodata for corner in corners], axis=0)
    value = (corners[0] * (1 - fx) * (1 - fy) + corners[1] * fx * (1 - fy) + corners[2] * (1 - fx) * fy
             + corners[3] * fx * fy)
    return np.floor(value + 0.5).astype(np.uint16), valid


def plain_nearest(path: str, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The arbiter of a cross-CRS class read (SCL): the source pixel under each exact pixel centre;
    (H, W) uint8 classes and where that pixel is inside the source and data."""
    source, col, row, nodata = source_coordinates(path, grid)
    c, r = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    inside = (c >= 0) & (r >= 0) & (c < source.shape[1]) & (r < source.shape[0])
    value = source[np.clip(r, 0, source.shape[0] - 1), np.clip(c, 0, source.shape[1] - 1)]
    return value.astype(np.uint8), inside & (value != nodata)


def arbiter_read(peer: Peer, scene: str, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 10) plain-bilinear S2 bands of ``scene`` on ``grid`` (offset removed) and where all are valid."""
    reads = [plain_bilinear(peer.hrefs[scene][key], grid) for key in S2_KEYS[:-1]]
    bands = np.stack([values for values, _ in reads], axis=-1)
    return harmonise_reflectance(bands, peer.offsets[scene]), np.all([valid for _, valid in reads], axis=0)


def compare_s2_tile(folder: Path, peer: Peer, exact: Agreement, native: Agreement,
                    arbiter: Agreement, edges: Agreement) -> tuple[int, int]:
    """Add one tile's S2 days to the tallies; return (days the tile left out, of which the peer has data).

    Pixels taken from a granule in the ROI's zone are compared with odc-stac's read of it; those
    from a granule in another zone with the plain bilinear (:func:`plain_bilinear`), as is odc-stac's.
    Pixels at a cross-zone granule's data edge that odc-stac reads as nodata go to ``edges``.
    """
    tile, meta, t = read_tile(folder), read_tile_metadata(folder), TileId.parse(folder.name)
    window = (slice(t.y0, t.y1), slice(t.x0, t.x1))
    grid = open_roi(folder / "roi.tiff").grid
    for k, (date, scenes) in enumerate(zip(meta["s2_dates"], meta["s2_scenes"], strict=True)):
        own_bands, own_scl = peer_read(peer.s2, peer.days.index(date), window)
        scenes = sorted(scenes)
        if len(scenes) > 1:
            reads = [S2Granule(*peer_read(peer.granules, peer.granule_ids.index(s), window), peer.offsets[s])
                     for s in scenes]
        else:
            reads = [S2Granule(own_bands, own_scl, peer.offsets[scenes[0]])]
        # the day rule decides on each cross-zone granule's exact nearest SCL, not on odc-stac's
        # (whose approximate transform moves a class edge by a pixel here and there)
        cross = [index for index, scene in enumerate(scenes) if peer.zones[scene] != ROI_ZONE]
        nearest = {index: plain_nearest(peer.hrefs[scenes[index]]["scl"], grid) for index in cross}
        odc_scl = {index: reads[index].scl for index in cross}
        # a cross-zone granule's data edge where odc-stac's approximate transform reads nodata and the exact
        # one data: the rule applied to odc-stac's reads sees no granule there, ours the cross-zone one
        edge = np.any([nearest[index][1] & ~reads[index].bands.any(axis=-1) for index in cross], axis=0) \
            if cross else np.zeros(own_scl.shape, bool)
        for index, (scl, there) in nearest.items():
            reads[index] = dataclasses.replace(reads[index], scl=np.where(there, scl, reads[index].scl))
        day = mosaic_s2(reads, own_scl.shape)
        bands, mask = (day.bands, day.mask) if day else (np.zeros_like(own_bands), np.zeros_like(own_scl))
        source = taken_from(reads)
        ours = np.asarray(tile.bands[k])
        for index, scene in enumerate(scenes):
            where, zone = source == index, peer.zones[scene]
            if zone == ROI_ZONE:
                exact.add(f"S2 10 m bands, from {zone} granules", ours[..., :4], bands[..., :4], where & ~edge)
                exact.add(f"S2 20 m bands, from {zone} granules", ours[..., 4:], bands[..., 4:], where & ~edge)
                edges.add(f"S2 bands, from {zone} granules by the rule on odc-stac's reads", ours, bands,
                          where & edge)
                continue
            plain, valid = arbiter_read(peer, scene, grid)
            odc = harmonise_reflectance(reads[index].bands, peer.offsets[scene])
            for name, columns in (("10 m", slice(0, 4)), ("20 m", slice(4, 10))):
                quantity = f"S2 {name} bands, from {zone} granules"
                exact.add(f"{quantity}, ours vs plain bilinear", ours[..., columns], plain[..., columns],
                          where & valid)
                arbiter.add(f"{quantity}, odc-stac vs plain bilinear", odc[..., columns], plain[..., columns],
                            where & valid)
        exact.add(f"S2 valid mask, pixels from {ROI_ZONE} granules or none", tile.masks[k], mask,
                  ~np.isin(source, cross) & ~edge)
        edges.add(f"S2 valid mask, pixels from {ROI_ZONE} granules or none by the rule on odc-stac's reads",
                  tile.masks[k], mask, ~np.isin(source, cross) & edge)
        for index in cross:
            scl, data_there = nearest[index]
            where, zone = (source == index) & data_there, peer.zones[scenes[index]]
            exact.add(f"S2 valid mask, from {zone} granules, ours vs nearest SCL", tile.masks[k],
                      scl_valid_mask(scl), where)
            arbiter.add(f"S2 SCL validity, from {zone} granules, odc-stac vs nearest SCL",
                        scl_valid_mask(odc_scl[index]), scl_valid_mask(scl), where)
        overlap = np.sum([granule.scl != 0 for granule in reads], axis=0) > 1
        theirs = harmonise_reflectance(own_bands, peer.offsets[scenes[0]])
        native.add("in the two granules' overlap", ours, theirs, overlap)
        for index, scene in enumerate(scenes):
            native.add(f"elsewhere, from {peer.zones[scene]} granules", ours, theirs, ~overlap & (source == index))
    left_out = [d for d in peer.days if d not in meta["s2_dates"]]
    with_data = sum(bool(peer.s2["scl"][(peer.days.index(d), *window)].any()) for d in left_out)
    return len(left_out), with_data


def compare_s1_tile(folder: Path, peer: Peer, exact: Agreement) -> None:
    """Add one tile's S1 days (both orbit directions) to the tallies: our codes against odc-stac's reads encoded."""
    tile, meta, t = read_tile(folder), read_tile_metadata(folder), TileId.parse(folder.name)
    window = (slice(t.y0, t.y1), slice(t.x0, t.x1))
    for direction in ("ascending", "descending"):
        sar = getattr(tile, f"sar_{direction}")
        for k, date in enumerate(meta[f"s1_{direction}_dates"]):
            layer = peer.s1_days.index(date)
            codes = encode_s1_db(np.stack([peer.s1[key][(layer, *window)] for key in S1_KEYS], axis=-1))
            exact.add("S1 dB codes, VV and VH", sar[k], codes)


def agreement_lines(tiles_dir: Path, odc_dir: Path, granules_dir: Path, catalog: Path, data_root: Path) -> list[str]:
    """Our tiles against the peer's reads: exact with our rule applied, then against odc-stac's own mosaic."""
    items = [i for i in pystac.read_file(str(catalog)).get_items(recursive=True) if i.collection_id == "sentinel-2-l2a"]
    offsets = {i.id: has_boa_offset(i.datetime.date(), i.properties.get("s2:processing_baseline"),
                                    i.properties.get("earthsearch:boa_offset_applied")) for i in items}
    days, s2 = peer_arrays(odc_dir, "s2", S2_KEYS)
    granule_ids, granules = peer_arrays(granules_dir, "g", S2_KEYS)
    s1_days, s1 = peer_arrays(odc_dir, "s1", S1_KEYS)
    zones = {i.id: f"{str(i.properties['proj:code'])[-2:]}N" for i in items}
    hrefs = {i.id: {key: str(data_root / urlsplit(asset.href).path.lstrip("/")) for key, asset in i.assets.items()}
             for i in items}
    peer = Peer(days, s2, granule_ids, granules, s1_days, s1, offsets, zones, hrefs)
    exact, native, arbiter, edges = Agreement(), Agreement(), Agreement(), Agreement()
    left_out = with_data = 0
    for folder in sorted(tiles_dir.glob("*_*_*_*")):
        out, data_there = compare_s2_tile(folder, peer, exact, native, arbiter, edges)
        left_out, with_data = left_out + out, with_data + data_there
        compare_s1_tile(folder, peer, exact)
    return ["pixel agreement of our tiles (1x, 1 process) with odc-stac's reads of the same items, grid and "
            "resampling, our day rule (mosaic_s2: offset removal, valid first) applied to odc-stac's "
            f"per-granule reads (the two-granule days' {len(granule_ids)} granules loaded one by one):",
            *exact.lines(),
            f"  (tile, day) pairs without any granule over the tile, left out by ours: {left_out}; of these with "
            f"data in odc-stac's read: {with_data}", *arbiter.lines(), *CROSS_ZONE_NOTE,
            "at a 32N granule's swath edge where odc-stac's approximate transform reads nodata and the exact one "
            "data (a pixel centre within 0.125 px of the edge), so the rule on odc-stac's reads sees no 32N granule "
            "and ours does (its SCL is then checked above, against the exact nearest):", *edges.lines(),
            "against odc-stac's own groupby='solar_day' mosaic (BOA offset removed here, as odc-stac leaves it). "
            "odc-stac fuses the first non-nodata pixel, items by time then id, so in the overlap it takes the 32N "
            "granule (4 s earlier); ours takes the 31N one (id order) wherever it is valid:", *native.lines()]


# ------------------------------------------------------------------------------------------ report


def table_lines(rows: dict[str, Row]) -> list[str]:
    """The runs as a Markdown table."""
    head = ["run", "ROI px", "tiles", "wall s", *(f"{s} s" for s in STEPS), "MB read (server)",
            "MB (reader's own count)", "peak RSS MB", "peak RSS MB per worker", "disk MB", "CPU s",
            "server CPU s", "other processes' CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows.values():
        reader = "–" if row.reader_bytes is None else f"{row.reader_bytes / 1e6:.0f}"
        m = row.measured
        cells = [row.label, f"{row.roi_px}²", str(row.tiles or "–"), f"{m.wall_s:.1f}",
                 *(f"{row.steps[s]:.1f}" for s in STEPS), f"{m.bytes_read / 1e6:.0f}", reader,
                 f"{m.peak_rss_mb:.0f}", " / ".join(f"{mb:.0f}" for mb in row.worker_rss_mb),
                 f"{row.disk_bytes / 1e6:.0f}", f"{m.cpu_s:.0f}", f"{m.server_cpu_s:.0f}", f"{m.others_cpu_s:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_lines(rows: dict[str, Row], planned: dict[int, float | None], scale: data.Scale) -> list[str]:
    """Ratios and the issue's targets, for the runs that were made."""
    out: list[str] = []

    def target(text: str, value: float, limit: float, at_most: bool = True) -> None:
        met = value <= limit if at_most else value >= limit
        out.append(f"- {text}: {value:.2f} (target {'≤' if at_most else '≥'} {limit}) — {'met' if met else 'NOT met'}")

    if {"local", "odc"} <= rows.keys():
        ours, peer = rows["local"], rows["odc"]
        target("wall time, ours (1 process) / odc-stac", ours.measured.wall_s / peer.measured.wall_s, 1.0)
        target("read+write step, ours / odc-stac", ours.steps["read+write"] / peer.steps["read+write"], 1.0)
        target("bytes read, ours / odc-stac", ours.measured.bytes_read / max(peer.measured.bytes_read, 1), 1.1)
    if {"dask1", "dask2"} <= rows.keys():
        one, two = rows["dask1"], rows["dask2"]
        target("throughput, --dask-local 2 / --dask-local 1 (whole run)", one.measured.wall_s / two.measured.wall_s,
               1.6, at_most=False)
        target("throughput, --dask-local 2 / --dask-local 1 (read+write step)",
               one.steps["read+write"] / two.steps["read+write"], 1.6, at_most=False)
    if {"local", "area4"} <= rows.keys():
        small, large = rows["local"].measured, rows["area4"].measured
        target("peak RSS, 4x area / 1x area (1 process)", large.peak_rss_mb / small.peak_rss_mb, 1.3)
        out.append(f"- 4x area / 1x area: bytes read x{large.bytes_read / small.bytes_read:.2f}, wall time "
                   f"x{large.wall_s / small.wall_s:.2f}, disk "
                   f"x{rows['area4'].disk_bytes / max(rows['local'].disk_bytes, 1):.2f}")
    for area, least in planned.items():
        if least:
            read = ", ".join(f"{row.label} x{row.measured.bytes_read / least:.2f}" for row in rows.values()
                             if row.roi_px == scale.roi_px * (2 if area == 4 else 1))
            out.append(f"- least bytes for the {area}x ROI (--dry-run: each COG block its tiles touch, once): "
                       f"{least / 1e6:.0f} MB; read: {read}")
    ours = [mb for name, row in rows.items() if name != "odc" for mb in row.worker_rss_mb]
    if ours:
        target("largest peak RSS per worker of ours, GB", max(ours) / 1024, 1.0)
    return out


def machine_lines() -> list[str]:
    """CPU, cores and the load average (other processes make the figures slower)."""
    from btfm_infer.hardware import cpu_model

    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return [f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average at the end (1, 5, 15 min): {load}"]


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface (the ``--odc-peer`` options are for the peer's own process)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--scale", choices=sorted(data.SCALES), default="issue",
                        help="issue: 1000² px ROI, 500-px tiles, 70 S2 + 60 S1 days; small: 400² px, 20 + 12 "
                             "days; tiny: 200² px, 6 + 4 days (the smoke test)")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "btfm_bench_preprocessing",
                        help="folder of the generated COGs (reused when present)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated runs, of {', '.join(RUNS)}")
    parser.add_argument("--workers", type=int, default=4, help="the pipeline's --workers (parallel reads)")
    parser.add_argument("--odc-threads", type=int, default=4, help="dask threads of the odc-stac load")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (tiles, logs) and print where")
    parser.add_argument("--odc-peer", nargs=3, metavar=("CATALOG", "ROI", "OUT"), type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--granules", action="store_true", help=argparse.SUPPRESS)
    return parser


def rehearse(scale: data.Scale, runs: Sequence[str], args: argparse.Namespace, work: Path) -> list[str]:
    """Serve the dataset, make the runs, compare the pixels; return the report."""
    root = data.ensure_dataset(args.data, scale)
    size = dir_bytes(root)
    with LoopbackServer(root) as server:
        catalog = data.write_catalog(root, server.url, work / "stac")
        rows: dict[str, Row] = {}
        for name in runs:
            print(f"run: {RUNS[name][0]} ...", file=sys.stderr, flush=True)
            rows[name] = (run_odc(scale, catalog, work, server, args.odc_threads) if name == "odc" else
                          run_ours(name, scale, catalog, work, server, args.workers))
            if name not in ("local", "odc") and not args.keep:  # only these two are compared: free the disk
                shutil.rmtree(RunLayout(work / name).tiles_dir)
        if {"local", "odc"} <= set(runs):
            run_odc(scale, catalog, work, server, args.odc_threads, granules=True)
        planned = {area: planned_bytes(scale, catalog, work, area) for area in sorted({RUNS[n][1] for n in runs})}
    report = [f"`make bench-preprocessing` (--scale {scale.name}): ROI {scale.roi_px}² px (4x: {2 * scale.roi_px}² px) "
              f"at the 31N/32N zone edge, {scale.tile_px}-px tiles; {scale.s2_days} S2 days ({scale.split_days} as a "
              f"31N + a 32N granule), {scale.s1_days} S1 days; COGs {scale.block}-px blocks, deflate, "
              f"{size / 1e9:.2f} GB served by the loopback server", *machine_lines(), "",
              *table_lines(rows), "", *target_lines(rows, planned, scale)]
    if {"local", "odc"} <= set(runs):
        report += ["", *agreement_lines(RunLayout(work / "local").tiles_dir, work / "odc", work / "odc_granules",
                                        catalog, root)]
    return report


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Run the rehearsal (or, with ``--odc-peer``, be the peer's process); print the report."""
    args = build_parser().parse_args(argv)
    if args.odc_peer:
        odc_peer(*args.odc_peer, threads=args.odc_threads, chunk=args.chunk, granules=args.granules)
        return 0
    runs = [name.strip() for name in args.runs.split(",") if name.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown or not runs:
        raise BenchError(f"--runs {args.runs}: unknown run(s) {unknown or 'none given'}; use some of {', '.join(RUNS)}")
    work = Path(tempfile.mkdtemp(prefix="btfm_bench_prep_"))
    try:
        print("\n".join(rehearse(data.SCALES[args.scale], runs, args, work)))
    finally:
        if args.keep:
            print(f"run folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
