"""One error tree for BTFM.

Every error a user can trigger with bad input is a :class:`BTFMError`; the leaves also subclass
the matching builtin so callers can catch either. Messages say what was given, what was
expected and which flag or file to change. Entry points turn them into a one-line message and
exit code 2, never a traceback.
"""

from __future__ import annotations

__all__ = ["BTFMError", "CheckpointError", "CredentialsError", "DiskFullError", "DownloadError", "InputDataError",
           "InvalidDateRangeError", "InvalidROIError", "NoScenesFoundError", "OutputNotWritableError",
           "ServiceUnavailableError", "SourceError", "TileFormatError", "TooLargeError", "UnexpectedResponseError"]


class BTFMError(Exception):
    """Root of all BTFM errors."""


class InvalidROIError(BTFMError, ValueError):
    """The ROI raster cannot be used (missing, wrong CRS, resolution, bands or empty)."""


class InvalidDateRangeError(BTFMError, ValueError):
    """A date range is malformed, reversed, in the future or longer than one year."""


class NoScenesFoundError(BTFMError, LookupError):
    """A search returned no usable scene for the ROI and date range."""


class TileFormatError(BTFMError, ValueError):
    """A tile folder does not follow the tile contract (missing file, dtype, shape)."""


class CheckpointError(BTFMError, ValueError):
    """A checkpoint is missing, corrupt or not a BTFM checkpoint."""


class OutputNotWritableError(BTFMError, PermissionError):
    """An output folder cannot be created or written."""


class InputDataError(BTFMError, ValueError):
    """Input arrays (pixels, embeddings) have the wrong shape, dtype or values."""


class SourceError(BTFMError, RuntimeError):
    """A data source failed (unreadable asset, unsupported catalog, bad credentials)."""


class CredentialsError(SourceError):
    """Credentials for a service are missing or were rejected; the message names what to set."""


class DownloadError(SourceError):
    """A download failed or ended incomplete (size or checksum mismatch)."""


class ServiceUnavailableError(SourceError, ConnectionError):
    """A service could not be reached (no network, DNS, refused, timed out) or kept failing (HTTP 5xx/429)
    after the bounded retries; the message names the service, the URL and what to try."""


class UnexpectedResponseError(SourceError, ValueError):
    """A service answered, but not what its API promises (not JSON, a missing key, not STAC), or a
    static catalog links to a file that is missing or unreadable; the message names what was missing."""


class DiskFullError(BTFMError, OSError):
    """Not enough free space for an output, found before writing or when the disk filled up."""


class TooLargeError(BTFMError, ValueError):
    """A raster or array request is larger than the stated limit; the message names the flag to raise it."""
