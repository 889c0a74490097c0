"""Pure per-pixel conversions of the tile contract: SCL masking, S2 harmonisation, S1 dB encoding."""

from __future__ import annotations

import datetime as dt

import numpy as np

#: SCL classes that make an observation invalid: no data, saturated/defective, dark area,
#: cloud shadow, cloud medium and high probability. Water (6), cirrus (10), snow (11) stay valid.
SCL_INVALID: tuple[int, ...] = (0, 1, 2, 3, 8, 9)
#: First acquisition day of processing baseline 04.00, which adds +1000 to L2A reflectances.
BASELINE_04_START = dt.date(2022, 1, 25)
BOA_ADD_OFFSET = 1000
S1_DB_FLOOR = -25.0
S1_MAX_CODE = 30000


def scl_valid_mask(scl: np.ndarray) -> np.ndarray:
    """1 where the scene classification marks a usable observation, else 0 (uint8)."""
    return (~np.isin(scl, SCL_INVALID)).astype(np.uint8)


def parse_baseline(value: object) -> float | None:
    """Processing baseline as a number (``"04.00"`` -> 4.0), or None if absent/unparsable."""
    if value is None:
        return None
    try:
        return float(str(value).strip().lstrip("N"))
    except ValueError:
        return None


def has_boa_offset(acquired: dt.date, processing_baseline: object = None,
                   offset_removed_by_provider: bool | None = None) -> bool:
    """Whether an L2A product's pixels still carry the +1000 BOA offset of baseline >= 04.00.

    The product carries it when its processing baseline is >= 04.00 (when the item gives no
    baseline: when it was acquired from 2022-01-25 on). A provider that already subtracted it
    (Earth Search's ``earthsearch:boa_offset_applied: true``) leaves nothing to remove; the flag
    only counts for products that carried the offset in the first place, so an item flagged on
    an old baseline is never shifted, and the offset is removed exactly once.
    """
    baseline = parse_baseline(processing_baseline)
    carries = baseline >= 4.0 if baseline is not None else acquired >= BASELINE_04_START
    return carries and offset_removed_by_provider is not True


def harmonise_reflectance(dn: np.ndarray, offset: bool) -> np.ndarray:
    """Remove the +1000 offset (once) and clip at 0, keeping uint16 (pre-2022 scale)."""
    if not offset:
        return dn.astype(np.uint16, copy=False)
    return np.clip(dn.astype(np.int32) - BOA_ADD_OFFSET, 0, None).astype(np.uint16)


def encode_s1_db(sigma0: np.ndarray) -> np.ndarray:
    """Encode linear (power) backscatter as the seed's int16: ``400 * dB + 10000`` in [0, 30000].

    Equal to ``clip((20 log10(max(s, 1e-6)) + 50) * 200, 0, 30000)``; NaN, non-positive or
    ``<= -25 dB`` values give 0 (no data).
    """
    sigma0 = np.asarray(sigma0, dtype=np.float32)
    valid = np.isfinite(sigma0) & (sigma0 > 0)
    safe = np.where(valid, np.maximum(sigma0, 1e-6), 1.0)
    code = np.round((20.0 * np.log10(safe) + 50.0) * 200.0)
    code = np.where(valid, np.clip(code, 0, S1_MAX_CODE), 0)
    return code.astype(np.int16)


def decode_s1_db(code: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_s1_db` in dB (float32); 0 (no data) becomes NaN."""
    code = np.asarray(code)
    db = (code.astype(np.float32) - 10000.0) / 400.0
    return np.where(code == 0, np.nan, db).astype(np.float32)


def day_of_year(date: dt.date) -> int:
    """Day of year, 1-366."""
    return date.timetuple().tm_yday
