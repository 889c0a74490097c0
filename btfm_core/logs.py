"""Logging set-up for entry points: a console handler on stderr plus a log file.

Both handlers redact credentials (:class:`btfm_core.redact.RedactingFilter`) from every record
they write, the DEBUG records of libraries (urllib3, requests-oauthlib, sentinelhub,
pystac-client) and tracebacks included.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from btfm_core.errors import OutputNotWritableError
from btfm_core.redact import RedactingFilter

__all__ = ["OWNED_HANDLER", "setup_logging"]

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attribute marking the handlers setup_logging installed (others, e.g. pytest's, are left alone).
OWNED_HANDLER = "_btfm_handler"


def setup_logging(log_file: str | os.PathLike[str] | None = None, verbosity: int = 0) -> None:
    """Configure the root logger once per process.

    Args:
        log_file: also log (always at DEBUG) to this file; its folder is created.
        verbosity: -1 quiet (warnings), 0 info, >=1 debug on the console.
    """
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, OWNED_HANDLER, False):  # leave handlers of others (e.g. pytest) alone
            root.removeHandler(handler)
            handler.close()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    setattr(console, OWNED_HANDLER, True)
    console.setLevel(level)
    console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    console.addFilter(RedactingFilter())
    root.addHandler(console)
    # a log write that fails (a full disk) must not print a traceback for every record
    logging.raiseExceptions = False
    logging.captureWarnings(True)  # library warnings go through the handlers, and so through redaction
    if log_file is not None:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(log_file)
        except OSError as exc:
            raise OutputNotWritableError(
                f"cannot write the log file {log_file}: {exc.strerror or exc}; choose another --log-file or a "
                "folder you can write to") from exc
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler.addFilter(RedactingFilter())
        setattr(file_handler, OWNED_HANDLER, True)
        root.addHandler(file_handler)
    # libraries that log at DEBUG what is just noise, or secrets (redacted anyway; kept quiet too)
    for noisy in ("rasterio", "urllib3", "fiona", "pyogrio", "matplotlib", "requests_oauthlib", "oauthlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # asf_search logs its queries at INFO and its own ERROR line for a failed request, which we report ourselves
    logging.getLogger("asf_search").setLevel(logging.CRITICAL)
    # a Dask cluster's scheduler, nannies and workers announce every start and stop at INFO
    for chatty in ("distributed", "tornado"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
