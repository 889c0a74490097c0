"""Shared command-line plumbing: verbosity flags and error-to-exit-code handling."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence

from btfm_core.errors import BTFMError

log = logging.getLogger(__name__)

EXIT_USAGE = 2


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


def add_verbosity(parser: argparse.ArgumentParser) -> None:
    """Add ``-v/--verbose`` and ``-q/--quiet``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_const", const=1, dest="verbosity",
                       default=0, help="log debug messages to the console")
    group.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                       help="log only warnings and errors to the console")


def entry_point(func: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Wrap ``main(argv) -> int`` so BTFM errors print one clear line and exit 2."""

    @functools.wraps(func)
    def wrapper(argv: Sequence[str] | None = None) -> int:
        try:
            return func(argv)
        except BTFMError as exc:
            if logging.getLogger().handlers:
                log.error("%s", exc)
            else:
                print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapper
