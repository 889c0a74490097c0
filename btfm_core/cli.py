"""Shared command-line plumbing: the options several steps share, verbosity flags, error-to-exit-code handling."""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from btfm_core.errors import BTFMError, SourceError
from btfm_core.fileio import disk_full_error, is_disk_full
from btfm_core.logs import OWNED_HANDLER

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "HelpFormatter", "MainFunction", "add_checkpoint_option",
           "add_log_file_option", "add_overwrite_option", "add_seed_option", "add_standard_options",
           "add_tiles_dir_option", "add_version", "describe_unexpected", "entry_point", "prog_name"]

log = logging.getLogger(__name__)

#: Exit code for bad input, a full disk or a failing service (the message says what to fix).
EXIT_USAGE = 2
#: Exit code for an unexpected error (a bug, or an environment BTFM does not handle).
EXIT_FAILURE = 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the epilog's example layout.

    A default is shown only when it says something: not for flags, not for None, and not when the
    help text already explains it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or isinstance(action.default, bool) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


#: The name a bash driver (``main_pipeline.sh``...) was run by; read once, and not passed on to child processes.
_LAUNCHER = os.environ.pop("BTFM_PROG", None)


def prog_name(module: str) -> str:
    """How the user started this command, for its usage line.

    ``main_pipeline.sh`` (the bash drivers say so in ``BTFM_PROG``), a console script
    (``btfm-preprocess``), ``python -m <module>``, or the script path's name.
    """
    if _LAUNCHER:
        return _LAUNCHER
    original = list(getattr(sys, "orig_argv", []))
    if "-m" in original[1:-1]:
        return f"python -m {original[original.index('-m', 1) + 1]}"
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name and name not in ("__main__.py", "-c") else f"python -m {module}"


def package_version() -> str:
    """BTFM's version from the installed package metadata (``unknown`` outside an install)."""
    try:
        return importlib.metadata.version("btfm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def add_version(parser: argparse.ArgumentParser) -> None:
    """Add ``--version``: the command's name and BTFM's version."""
    parser.add_argument("--version", action="version", version=f"%(prog)s (BTFM {package_version()})")


def add_standard_options(parser: argparse.ArgumentParser) -> None:
    """Add what every entry point has: ``-v/--verbose``, ``-q/--quiet`` and ``--version``."""
    add_version(parser)
    add_verbosity(parser)


#: What ``add_argument`` returns (an ``argparse.Action``); parsers and argument groups both take these options.
ArgumentContainer = argparse._ActionsContainer


def add_overwrite_option(parser: ArgumentContainer, help: str = "replace existing outputs") -> None:
    """``--overwrite``: replace outputs that exist (every step refuses to, by default)."""
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_log_file_option(parser: ArgumentContainer, default: str) -> None:
    """``--log-file PATH`` (None: the step's default log, described by ``default``)."""
    parser.add_argument("--log-file", type=Path, default=None, help=f"log file (default: {default})")


def add_seed_option(parser: ArgumentContainer, help: str) -> None:
    """``--seed N`` (default 0): what it seeds is the step's ``help``."""
    parser.add_argument("--seed", type=int, default=0, help=help)


def add_checkpoint_option(parser: ArgumentContainer, help: str, default: Path | None = None,
                          required: bool = False) -> None:
    """``--checkpoint PATH``: a model checkpoint of any TESSERA family."""
    parser.add_argument("--checkpoint", type=Path, default=default, required=required, help=help)


def add_tiles_dir_option(parser: ArgumentContainer, help: str, required: bool = False,
                         aliases: Sequence[str] = ()) -> None:
    """``--tiles-dir PATH``: a run's tile folder (``retiled_d_pixel``); ``aliases``: the seed scripts' names."""
    parser.add_argument("--tiles-dir", *aliases, dest="tiles_dir", type=Path, default=None, required=required,
                        help=help)


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add ``-v/--verbose`` and ``-q/--quiet``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                       default=0, help="log debug messages to the console")
    group.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                       help="log only warnings and errors to the console")


def log_file_path() -> str | None:
    """The log file the root logger writes to (set by ``setup_logging``), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and getattr(handler, OWNED_HANDLER, False):
            return handler.baseFilename
    return None


def _report(message: str, exc: BaseException | None = None) -> None:
    """Print one error line (secrets redacted); the traceback goes to the log (and the console with -v)."""
    from btfm_core.redact import redact

    message = redact(message)
    if not logging.getLogger().handlers:
        print(f"error: {message}", file=sys.stderr)
        return
    log.error("%s", message)
    if exc is not None:
        log.debug("traceback of the error above", exc_info=exc)


def _where_details() -> str:
    path = log_file_path()
    return f"the traceback is in {path} (run with -v to see it here)" if path else "run with -v to see the traceback"


def describe_unexpected(exc: BaseException) -> str:
    """A one-line message for an exception that is not a :class:`BTFMError`: what failed, the likely fix."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return ("out of memory: the step needs more RAM than this machine has; use smaller tiles "
                f"(--tile-size), fewer workers or a smaller region; {_where_details()}")
    if is_disk_full(exc):
        return str(disk_full_error(getattr(exc, "filename", None) or "the output"))
    requests_module = sys.modules.get("requests")
    network_types: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    if requests_module is not None:
        network_types += (requests_module.exceptions.RequestException,)
    if isinstance(exc, network_types):
        return (f"network request failed ({type(exc).__name__}: {text}); check the connection, proxy settings "
                f"and the service's status, then run again (finished work is kept); {_where_details()}")
    if isinstance(exc, OSError) and exc.filename is not None:
        return (f"cannot access {exc.filename}: {exc.strerror or text}; check the path and its permissions; "
                f"{_where_details()}")
    return (f"unexpected error ({type(exc).__name__}: {text}); this is a bug in BTFM or an unusual environment; "
            f"{_where_details()}; please report it with the log")


class MainFunction(Protocol):
    """An entry point's ``main(argv=None) -> int`` (``argv`` None: the process's arguments)."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def entry_point(func: Callable[[Sequence[str] | None], int]) -> MainFunction:
    """Wrap ``main(argv) -> int`` so that no traceback reaches the console.

    A :class:`BTFMError` (bad input, a full disk, a failing service) prints its one-line message
    and exits 2; anything else prints one line saying what failed and where the traceback is
    logged, and exits 1. Messages are redacted of credentials.
    """

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return func(argv)
        except BTFMError as exc:
            where = log_file_path()
            # a failing service: its answers and the retries are in the log
            _report(f"{exc} (details in {where})" if isinstance(exc, SourceError) and where else str(exc), exc)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # output piped into head and the like: the reader has what it wanted
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as exc:  # MemoryError, OSError, network and library errors: one line, never a traceback
            _report(describe_unexpected(exc), exc)
            return EXIT_USAGE if is_disk_full(exc) else EXIT_FAILURE

    return wrapper
