"""Pure conversions of the tile contract: SCL mask, BOA offset, S1 dB encoding, dates."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from btfm_core.errors import InvalidDateRangeError
from btfm_preprocessing.encoding import (
    decode_s1_db,
    encode_s1_db,
    harmonise_reflectance,
    has_boa_offset,
    scl_valid_mask,
)
from btfm_preprocessing.period import parse_period


def test_scl_mask_follows_the_contract() -> None:
    scl = np.arange(12, dtype=np.uint8)
    # invalid: 0 no data, 1 saturated, 2 dark, 3 shadow, 8/9 cloud; valid: 4-7, water 6, cirrus 10, snow 11
    assert scl_valid_mask(scl).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1]
    assert scl_valid_mask(scl).dtype == np.uint8


@pytest.mark.parametrize(("day", "baseline", "expected"), [
    (dt.date(2021, 6, 1), None, False),
    (dt.date(2022, 1, 24), None, False),
    (dt.date(2022, 1, 25), None, True),
    (dt.date(2023, 5, 1), "05.09", True),
    (dt.date(2022, 3, 1), "03.01", False),   # baseline says no offset whatever the date
    (dt.date(2021, 3, 1), "04.00", True),    # reprocessed archive carries the offset
])
def test_boa_offset_decision(day: dt.date, baseline: str | None, expected: bool) -> None:
    assert has_boa_offset(day, baseline) is expected


def test_offset_removed_once_and_clipped() -> None:
    dn = np.array([0, 500, 1000, 1500, 11000], np.uint16)
    assert harmonise_reflectance(dn, offset=True).tolist() == [0, 0, 0, 500, 10000]
    assert harmonise_reflectance(dn, offset=False).tolist() == dn.tolist()
    assert harmonise_reflectance(dn, offset=True).dtype == np.uint16


def test_s1_encoding_is_400_db_plus_10000() -> None:
    db = np.array([-20.0, -10.0, 0.0, 5.0])
    codes = encode_s1_db(10 ** (db / 10))
    assert codes.dtype == np.int16
    assert codes.tolist() == [2000, 6000, 10000, 12000]
    np.testing.assert_allclose(decode_s1_db(codes), db, atol=1e-3)


def test_s1_no_data_and_floor_encode_to_zero() -> None:
    sigma = np.array([np.nan, 0.0, -1.0, 10 ** (-30 / 10), 10 ** (60 / 10)], np.float32)
    assert encode_s1_db(sigma).tolist() == [0, 0, 0, 0, 30000]


def test_period_validation() -> None:
    today = dt.date(2026, 11, 24)
    period = parse_period("2020-11-01", "2021-10-31", "S2", today)
    assert period.contains(dt.date(2021, 1, 1)) and not period.contains(dt.date(2021, 11, 1))
    with pytest.raises(InvalidDateRangeError, match="before its start"):
        parse_period("2021-12-31", "2021-01-01", "S2", today)
    with pytest.raises(InvalidDateRangeError, match="in the future"):
        parse_period("2026-06-01", "2026-12-31", "S1", today)
    with pytest.raises(InvalidDateRangeError, match="day of year"):
        parse_period("2021-01-01", "2022-01-01", "S2", today)
    with pytest.raises(InvalidDateRangeError, match="YYYY-MM-DD"):
        parse_period("2021-13-01", "2021-12-31", "S2", today)
    assert parse_period("2020-01-01", "2020-12-31", "S2", today).end.day == 31  # leap year, 366 days


@pytest.mark.parametrize(("day", "baseline", "flag", "expected"), [
    (dt.date(2025, 7, 31), "05.11", True, False),   # Earth Search already harmonised: never twice
    (dt.date(2025, 7, 31), "05.11", False, True),
    (dt.date(2021, 7, 31), "02.12", True, False),   # flag on an old baseline shifts nothing
    (dt.date(2022, 6, 1), None, None, True),        # no metadata: the date decides
])
def test_offset_removed_exactly_once(day: dt.date, baseline: str | None, flag: bool | None, expected: bool) -> None:
    assert has_boa_offset(day, baseline, flag) is expected
