"""Validated acquisition periods given on the command line."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from btfm_core.errors import InvalidDateRangeError


@dataclass(frozen=True)
class Period:
    """An inclusive date range of at most one year (so days of year do not repeat)."""

    start: dt.date
    end: dt.date

    def contains(self, day: dt.date) -> bool:
        """Whether ``day`` lies in the range (inclusive)."""
        return self.start <= day <= self.end

    @property
    def stac_datetime(self) -> str:
        """STAC ``datetime`` search string covering whole days (UTC)."""
        return f"{self.start.isoformat()}T00:00:00Z/{self.end.isoformat()}T23:59:59Z"

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


def _one_year_after(day: dt.date) -> dt.date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return dt.date(day.year + 1, 3, 1)


def _parse_date(value: str, what: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError as exc:
        raise InvalidDateRangeError(f"{what} '{value}' is not a date; use YYYY-MM-DD, e.g. 2021-01-01") from exc


def parse_period(start: str, end: str, what: str, today: dt.date | None = None) -> Period:
    """Parse and check a ``start``/``end`` pair given as YYYY-MM-DD.

    Raises:
        InvalidDateRangeError: malformed dates, end before start, end in the future, or a
            range longer than one year (days of year would repeat in ``doys.npy``).
    """
    today = today or dt.date.today()
    first, last = _parse_date(start, f"{what} start"), _parse_date(end, f"{what} end")
    if last < first:
        raise InvalidDateRangeError(f"{what} end {last} is before its start {first}; swap them.")
    if last > today:
        raise InvalidDateRangeError(f"{what} end {last} is in the future (today is {today}); "
                                    "no acquisitions exist yet, choose an earlier end date.")
    if last >= _one_year_after(first):
        raise InvalidDateRangeError(
            f"{what} range {first}..{last} spans {(last - first).days + 1} days; it must end before "
            f"{_one_year_after(first)} because tiles store day of year, which would repeat. "
            "Split the run by year.")
    return Period(first, last)
