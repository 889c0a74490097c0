"""Atomic file and folder writes, writable-folder and free-space checks.

Every output of the pipeline is written under a temporary name next to its final path and
renamed when complete, so an interrupted run never leaves a file that looks finished.

A full disk must surface as an error, never as a signal: a write through a memory map into a
sparse file that finds no free block kills the process with SIGBUS. So every step checks the
free space against the size of what it will write (:func:`check_free_space`), and arrays
written through memory maps are created by :func:`create_npy`, which reserves their blocks
first (``posix_fallocate``, else zeros written), so a full disk fails when the file is created.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import hashlib
import logging
import mmap
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from btfm_core.errors import BTFMError, DiskFullError, OutputNotWritableError

__all__ = ["TMP_PREFIX", "atomic_path", "check_free_space", "create_npy", "disk_full_as_error", "disk_full_error",
           "ensure_writable_dir", "file_digest", "human_bytes", "is_disk_full", "refuse_overwrite",
           "release_free_heap", "release_pages", "remove_stale_temporaries", "temp_sibling"]

log = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-"
#: How a full disk reads in errors that carry no errno (GDAL passes the C library's text on).
_DISK_FULL_SIGNS = ("No space left on device", "Disk quota exceeded", "File too large", "Free disk space available")
#: How GDAL reports a failed write without its reason.
_WRITE_FAILED = re.compile(r"write (error|failed)|failed to write|cannot write", re.IGNORECASE)
#: Free space below which a failed write is taken for a full disk.
_NEARLY_FULL_BYTES = 64 * 2**20
#: A temporary name of :func:`temp_sibling`: ``.tmp-<final name>.<pid>.<8 hex>`` and any suffix.
_TEMP_NAME = re.compile(r"^\.tmp-(.+?)\.\d+\.[0-9a-f]{8}(\.[^/]*)?$")


def temp_sibling(final: Path) -> Path:
    """A unique temporary path in the same folder as ``final`` (same file system)."""
    return final.with_name(f"{TMP_PREFIX}{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path; on success rename it to ``final``, on error delete it.

    Works for files and folders; an existing ``final`` is replaced.
    """
    final = Path(final)
    tmp = temp_sibling(final)
    try:
        yield tmp
        if final.is_dir() and tmp.is_dir():
            old = temp_sibling(final)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: Path, names: Iterable[str] | None = None) -> int:
    """Delete leftovers of interrupted atomic writes in ``folder``; return how many.

    Args:
        folder: where the step writes (call it with the folder's lock held).
        names: only the temporaries of these final names (e.g. ``["emb.tif"]``); None: all.
    """
    if not folder.is_dir():
        return 0
    prefixes = tuple(f"{TMP_PREFIX}{name}." for name in names) if names is not None else (TMP_PREFIX,)
    count = 0
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            count += 1
    if count:
        log.info("removed %d unfinished output(s) of an interrupted run in %s", count, folder)
    return count


def ensure_writable_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    Raises:
        OutputNotWritableError: naming the folder and what it was for.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{TMP_PREFIX}write-probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot write to the {what} {path}: {exc.strerror or exc}. "
            "Choose a folder you can write to, or fix its permissions."
        ) from exc
    return path


def refuse_overwrite(path: str | os.PathLike[str], overwrite: bool, alternative: str = "") -> None:
    """Raise unless ``path`` is free or ``overwrite`` is set; outputs are never replaced silently.

    Args:
        path: the output about to be written.
        overwrite: the user's ``--overwrite``.
        alternative: the flags that choose another output, for the message (e.g. ``--out``).
    """
    if Path(path).exists() and not overwrite:
        other = f", or choose another {alternative}" if alternative else ""
        raise BTFMError(f"output {path} already exists; pass --overwrite to replace it{other}")


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file (``sha256``, ``md5``...), read in 1 MB chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def human_bytes(size: float) -> str:
    """``size`` bytes as a short decimal figure: ``'512 B'``, ``'3.4 MB'``, ``'1.28 TB'``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer can still use on the file system of ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def check_free_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Refuse to start writing ``needed`` bytes into ``folder`` when its file system has less free.

    Args:
        folder: where the output goes.
        needed: its size in bytes (exact, or an upper bound the message calls so).
        what: the output, for the message (e.g. ``"4 tile(s) of 60 dates"``).

    Raises:
        DiskFullError: naming the bytes needed, the bytes available and the folder.
    """
    available = free_bytes(folder)
    if needed > available:
        raise DiskFullError(f"not enough free space in {folder}: {what} needs {human_bytes(needed)} but only "
                            f"{human_bytes(available)} is free; free some space or write to another folder")


def final_path(path: str | os.PathLike[str]) -> Path:
    """The output a temporary path stands for: ``.tmp-<name>.<pid>.<hex>[...]`` parts become ``<name>``."""
    return Path(*[_TEMP_NAME.sub(r"\1", part) for part in Path(path).parts])


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (``ulimit -f``), or None when unlimited."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def disk_full_error(path: str | os.PathLike[str]) -> DiskFullError:
    """The one message for a disk (or a file-size limit) that filled up while ``path`` was being written."""
    shown = final_path(path)
    folder = shown.parent
    limit = file_size_limit()
    free = free_bytes(folder)
    if limit is not None and free > limit:
        cause = f"the file-size limit of {human_bytes(limit)} (ulimit -f) was reached while writing {shown}"
    else:
        cause = f"no space left on the device while writing {shown} ({human_bytes(free)} free in {folder})"
    return DiskFullError(f"{cause}; the partial output was removed. Free some space, raise the limit or write to "
                         "another folder, then run again: finished outputs are kept")


def is_disk_full(exc: BaseException, folder: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or file-size limit, GDAL's included.

    GDAL often reports a failed write without the C library's reason ("Write error at
    scanline 0"); given the ``folder`` written to, such a write failure counts as a full disk when
    the folder's file system is (nearly) full or a file-size limit is set.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFullError):
            return True
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        text = str(current)
        if any(sign in text for sign in _DISK_FULL_SIGNS):
            return True  # GDAL's errors carry the C library's message, not an errno
        if folder is not None and _WRITE_FAILED.search(text) and (
                file_size_limit() is not None or free_bytes(folder) < _NEARLY_FULL_BYTES):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def disk_full_as_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a full disk met while writing ``path`` (any library's error) into :func:`disk_full_error`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc, Path(path).parent):
            raise disk_full_error(path) from exc
        raise


def reserve_blocks(path: str | os.PathLike[str], start: int, length: int) -> None:
    """Allocate the blocks of ``path`` from byte ``start`` for ``length`` bytes now.

    ``os.posix_fallocate`` where the file system supports it, else zeros written over the range
    (which must hold zeros already, as a freshly created sparse file does).

    Raises:
        DiskFullError: if the disk cannot hold the range.
    """
    if length <= 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, start, length)
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise
        zeros = bytes(1 << 20)
        for offset in range(start, start + length, len(zeros)):
            os.pwrite(fd, zeros[:min(len(zeros), start + length - offset)], offset)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise
    finally:
        os.close(fd)


def release_pages(array: np.ndarray) -> None:
    """Write a memory-mapped array's changes to its file and drop its pages from this process's memory.

    The pages of a file mapping count as the process's resident memory (RSS) once touched, so a
    tile's (T, H, W, 10) ``bands.npy`` written through a memory map would stay resident until
    closed. ``msync`` first (the data is on disk), then ``MADV_DONTNEED``: a later access reads the
    file again. A no-op for arrays that are not memory maps, or where ``madvise`` is missing.
    """
    mapping = getattr(array, "_mmap", None)
    if not isinstance(mapping, mmap.mmap):
        return
    mapping.flush()
    if hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_heap() -> None:
    """Hand the C heap's free memory back to the OS (glibc ``malloc_trim(0)``; a no-op elsewhere).

    A day's arrays (tens of MB, allocated and freed in reader threads) are served by glibc from
    its per-thread heaps once its adaptive mmap threshold has grown, and the freed memory stays
    resident: measured, peak RSS grew from 0.72 to 0.99 GB between the rehearsal's 1x and 4x area
    without this, for the same read group size.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def create_npy(path: str | os.PathLike[str], dtype: np.typing.DTypeLike, shape: tuple[int, ...]) -> np.memmap:
    """A zero-filled ``.npy`` opened as a writable memory map, with all its blocks reserved.

    Raises:
        DiskFullError: if the disk cannot hold the array (the caller's atomic write removes the file).
    """
    try:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise
    size = os.path.getsize(path)
    reserve_blocks(path, size - array.nbytes, array.nbytes)
    return array
