"""Atomic file and folder writes, and writable-folder checks.

Every output of the pipeline is written under a temporary name next to its final path and
renamed when complete, so an interrupted run never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from btfm_core.errors import BTFMError, OutputNotWritableError

TMP_PREFIX = ".tmp-"


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


def remove_stale_temporaries(folder: Path) -> int:
    """Delete leftovers of interrupted atomic writes in ``folder``; return how many."""
    count = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.name.startswith(TMP_PREFIX):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            count += 1
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
