"""One run per output folder at a time: an advisory ``fcntl`` lock held for a step's duration.

Each writing step (preprocessing, inference, stitch, export) holds ``<folder>/.btfm.lock``
while it runs and removes it when it ends. A second run on the same folder stops at once with the holder's pid, command
and start time. The kernel releases the lock when its holder dies, however it dies, so a
lock left by a killed run is simply taken over (with a log line naming the dead holder).

Advisory locks work between processes of one machine on local file systems; on NFS they depend
on the server's lock daemon, so runs on several machines sharing a folder must not rely on them.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from btfm_core.errors import BTFMError

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "FolderLockedError", "folder_lock"]

#: Name of the lock file in a locked folder.
LOCK_NAME = ".btfm.lock"
#: A lock found held but still empty is read again this many times, this many seconds apart.
_HOLDER_WAITS, _HOLDER_WAIT_S = 10, 0.1


class FolderLockedError(BTFMError):
    """Another run holds the folder's lock."""


def _read_holder(handle: Any) -> dict[str, Any]:
    handle.seek(0)
    try:
        data = json.loads(handle.read() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ({holder.get('step', '?')}: "
            f"{holder.get('command', '?')}), started {when}")


@contextmanager
def folder_lock(folder: Path, step: str) -> Iterator[Path]:
    """Hold the advisory lock of ``folder`` for ``step`` (``preprocessing``, ``inference``, …).

    Yields:
        The lock file's path.

    Raises:
        FolderLockedError: another process holds the lock (names its pid, command and start).
    """
    path = Path(folder) / LOCK_NAME
    handle = _acquire(path, folder)
    try:
        previous = _read_holder(handle)
        if previous:
            state = "no longer running" if not _alive(previous.get("pid")) else "not holding the lock"
            log.info("taking over the lock of %s: that run is %s (it was interrupted)", _describe(previous), state)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "step": step,
              "command": " ".join(sys.argv)[:500], "started": time.time()}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(me))
        handle.flush()
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)  # removed while still locked: a finished run leaves nothing behind
    finally:
        handle.close()  # releases the lock


def _acquire(path: Path, folder: Path) -> Any:
    """Open and lock ``path``; retry if a finishing holder unlinked it between our open and our lock."""
    for _ in range(10):
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the whole step
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(handle)
            for _ in range(_HOLDER_WAITS):  # the holder has just locked it and is writing who it is
                if holder:
                    break
                time.sleep(_HOLDER_WAIT_S)
                holder = _read_holder(handle)
            handle.close()
            raise FolderLockedError(
                f"{folder} is in use by another run: {_describe(holder)}; wait for it to finish, or stop it, "
                "or use another folder") from None
        try:
            same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return handle
        handle.close()  # we locked a file its holder had just removed: lock the current one
    raise FolderLockedError(f"could not lock {path}: it keeps being replaced; is another run starting?")
