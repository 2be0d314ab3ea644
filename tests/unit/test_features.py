from __future__ import annotations

import numpy as np
import xarray as xr
from testdata import PREPROCESS_PARAMS

from hpcpipe.contracts import check_features_store
from hpcpipe.features import channel_names, split_features
from hpcpipe.preprocess import preprocess

FEAT = {"lags": [0, 2], "leads": [1, 3], "derived": ["gradient"]}


def pre_for(raw: xr.Dataset, split: dict) -> xr.Dataset:
    p = {**PREPROCESS_PARAMS, "climatology": "month", "climatology_window": 1, "split": split}
    return preprocess(raw, p)[0].load()


def test_samples_are_lagged_and_led_slices(raw: xr.Dataset, split: dict):
    pre = pre_for(raw, split)
    ds = split_features(pre, "val", FEAT).load()
    check_features_store(ds, "val")
    a = pre["anomaly"]
    t_first = int(np.nonzero(pre["split"].values == "val")[0][0])
    # val starts at its first step (lags may reach into train); its last target stays in val
    assert ds["time"].values[0] == pre["time"].values[t_first]
    n_val = int((pre["split"] == "val").sum())
    assert ds.sizes["sample"] == n_val - 3
    assert list(ds["channel"].values) == channel_names(["t2m", "z500"], [0, 2], ["gradient"])
    k = 5
    np.testing.assert_array_equal(
        ds["inputs"].values[k, 2], a.values[t_first + k - 2, 0]
    )  # t2m_lag2
    np.testing.assert_array_equal(
        ds["targets"].values[k, 1, 1], a.values[t_first + k + 3, 1]
    )  # z500 lead 3
    assert ds["valid_time"].values[k, 1] == pre["time"].values[t_first + k + 3]
    # d/dx is a periodic centred difference
    x = a.values[t_first + k, 0]
    np.testing.assert_allclose(
        ds["inputs"].values[k, 4], 0.5 * (np.roll(x, -1, -1) - np.roll(x, 1, -1)), rtol=1e-6
    )


def test_train_samples_start_after_the_largest_lag(raw: xr.Dataset, split: dict):
    pre = pre_for(raw, split)
    ds = split_features(pre, "train", FEAT)
    assert ds["time"].values[0] == pre["time"].values[2]


def test_nan_become_zero_and_mask_marks_them(raw: xr.Dataset, split: dict):
    raw["t2m"][:, 0, :3] = np.nan
    ds = split_features(pre_for(raw, split), "test", FEAT).load()
    assert np.isfinite(ds["inputs"].values).all() and np.isfinite(ds["targets"].values).all()
    assert not ds["mask"].values[0, 0, :3].any() and ds["mask"].values[1].all()


def test_bit_identical_across_chunking(raw: xr.Dataset, split: dict):
    pre = pre_for(raw, split)
    a = split_features(pre.chunk(time=17), "train", FEAT).load()
    b = split_features(pre.chunk(time=548), "train", FEAT).load()
    xr.testing.assert_identical(a, b)
