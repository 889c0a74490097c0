"""Bytes received over the network, counted per run by a :class:`NetworkCounter` passed to what reads.

Two measurements add up. GDAL's own network statistics cover the range reads of COGs through
``/vsicurl/`` (every HTTP(S) raster read); they are process-wide, so a counter keeps the value it
saw when it was made and reports the difference. Clients outside GDAL (whole-file downloads of
:mod:`btfm_preprocessing.download`, Sentinel Hub's Process API answers) add their bytes with
:meth:`NetworkCounter.add`.

GDAL collects its statistics only when ``CPL_VSIL_NETWORK_STATS_ENABLED`` is on, and it decides
once per process, at its first network access. The option is part of the scoped
:func:`btfm_preprocessing.reader.gdal_env` settings, and every GDAL network access of the
preprocessing runs inside that scope, so the decision is "yes" (measured with GDAL 3.10 and
rasterio 1.4: a scoped option is seen by reads in worker threads too, and the statistics go on
being collected after the scope ends). In a process whose first GDAL network access happened
outside :func:`~btfm_preprocessing.reader.gdal_env` (another library's read), GDAL's share stays 0.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import threading
from pathlib import Path

import rasterio  # noqa: F401  (loads the GDAL library that _gdal_library looks for)

__all__ = ["NetworkCounter", "gdal_bytes_received"]


@functools.cache
def _gdal_library() -> ctypes.CDLL | None:
    """The GDAL shared library rasterio uses (loaded in this process by ``import rasterio``), or None."""
    candidates = []
    maps = Path("/proc/self/maps")
    if maps.is_file():
        loaded = {line.split()[-1] for line in maps.read_text().splitlines()
                  if "libgdal" in line.rsplit("/", 1)[-1]}
        # wheels bundle their own GDAL (pyogrio, fiona): the one rasterio loaded comes first
        candidates = sorted(loaded, key=lambda path: (0 if "rasterio" in path else
                                                      2 if "pyogrio" in path or "fiona" in path else 1, path))
    found = ctypes.util.find_library("gdal")
    for name in [*candidates, *([found] if found else [])]:
        try:
            lib = ctypes.CDLL(name)
            lib.VSINetworkStatsGetAsSerializedJSON.restype = ctypes.c_void_p
            lib.VSINetworkStatsGetAsSerializedJSON.argtypes = [ctypes.c_void_p]
            lib.VSIFree.argtypes = [ctypes.c_void_p]
            return lib
        except (OSError, AttributeError):
            continue
    return None


def gdal_bytes_received() -> int | None:
    """Bytes GDAL has fetched over HTTP in this process so far (range reads of COGs), or None if unknown.

    Reads GDAL's network statistics (``VSINetworkStatsGetAsSerializedJSON``, GDAL >= 3.2).
    """
    lib = _gdal_library()
    if lib is None:
        return None
    pointer = lib.VSINetworkStatsGetAsSerializedJSON(None)
    if not pointer:
        return 0
    try:
        stats = json.loads(ctypes.string_at(pointer).decode())
    finally:
        lib.VSIFree(pointer)
    return int(sum(method.get("downloaded_bytes", 0) for method in stats.get("methods", {}).values()))


class NetworkCounter:
    """Bytes received over the network since this counter was made (one run, or a worker's share of one).

    Thread-safe: downloads and reads running at once add to the same counter. Compared by identity.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._added = 0
        self._gdal_start = gdal_bytes_received()

    def add(self, n: int) -> None:
        """Count ``n`` bytes received by a client outside GDAL (a download, an API answer)."""
        with self._lock:
            self._added += n

    def total(self) -> int | None:
        """Bytes received since the counter was made: GDAL's reads plus :meth:`add`'s (None: GDAL's unknown)."""
        gdal_now = gdal_bytes_received()
        if gdal_now is None or self._gdal_start is None:
            return None
        with self._lock:
            return gdal_now - self._gdal_start + self._added

    def __repr__(self) -> str:
        return f"NetworkCounter(total={self.total()})"
