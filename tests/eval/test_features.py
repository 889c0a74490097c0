"""Raw-band features: the vectorised NaN percentiles equal numpy's reference on awkward series."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from btfm_eval.features import PERCENTILES, nan_percentiles


def reference(data: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """numpy's own (per-series loop) answer; all-NaN series warn there and give NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanpercentile(data, q, axis=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_percentiles_equal_numpy(dtype: type) -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(size=(40, 9, 3)).astype(dtype)
    data[rng.random(data.shape) < 0.4] = np.nan
    data[0] = np.nan  # a pixel without a valid date
    data[1, 1:, :] = np.nan  # one valid date
    data[2, :, 0] = 2.5  # constant series, no NaN
    data[3, :, 1] = [np.nan, 1, 1, np.nan, 4, 1, np.nan, 0, 1]  # ties
    out = nan_percentiles(data, PERCENTILES)
    expected = reference(data, PERCENTILES)
    assert out.shape == (len(PERCENTILES), 40, 3) and out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)  # bit for bit, NaN where numpy gives NaN
    assert np.isnan(out[:, 0]).all() and (out[:, 1] == data[1, 0]).all()
