"""Logging set-up for entry points: a console handler on stderr plus a log file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OWNED = "_btfm_handler"


def setup_logging(log_file: str | os.PathLike[str] | None = None, verbosity: int = 0) -> None:
    """Configure the root logger once per process.

    Args:
        log_file: also log (always at DEBUG) to this file; its folder is created.
        verbosity: -1 quiet (warnings), 0 info, >=1 debug on the console.
    """
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _OWNED, False):  # leave handlers of others (e.g. pytest) alone
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    setattr(console, _OWNED, True)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        setattr(file_handler, _OWNED, True)
        root.addHandler(file_handler)
    # libraries that log at DEBUG what must not reach a log file (OAuth secrets) or is just noise
    for noisy in ("rasterio", "urllib3", "fiona", "pyogrio", "matplotlib", "requests_oauthlib", "oauthlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
