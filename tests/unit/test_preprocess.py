from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
from testdata import (
    PREPROCESS_PARAMS,
    assert_matches_reference,
    make_raw,
    reference_periods,
    reference_preprocess,
)

from hpcpipe.contracts import check_preprocessed, check_thresholds
from hpcpipe.preprocess import preprocess
from hpcpipe.thresholds import thresholds


def params(split: dict, **kw) -> dict:
    monthly = {"climatology": "month", "climatology_window": 1}
    return {**PREPROCESS_PARAMS, **monthly, "split": split, **kw}


def test_matches_in_memory_xarray(raw: xr.Dataset, split: dict):
    out, stats = preprocess(raw.chunk(time=100), params(split))
    check_preprocessed(out)
    assert_matches_reference(out.load(), reference_preprocess(raw, params(split)), raw)
    assert list(out["split"].values[:2]) == ["train", "train"] and stats["counts"]["val"] == 90
    assert abs(stats["variables"]["z500"]["std"] - float(out["std"][1])) < 1e-9


def test_coarsen_and_masked_points(split: dict):
    raw = make_raw()
    raw["t2m"][:, :2, :2] = np.nan
    raw["t2m"][:, 2, 2] = np.nan  # one point of a 2x2 block: the block's mean is the other 3
    p = params(split, coarsen=2)
    out, _ = preprocess(raw.chunk(time=64), p)
    assert out.sizes["lat"] == 4 and out.sizes["lon"] == 8
    # a 2x2 block that is fully masked stays masked; the rest has values
    assert np.isnan(out["anomaly"].sel(variable="t2m").values[:, 0, 0]).all()
    assert np.isfinite(out["anomaly"].sel(variable="t2m").values[:, 1:, 1:]).all()
    assert_matches_reference(out.load(), reference_preprocess(raw, p), raw)


def test_coarsening_that_trims_a_global_grid_makes_it_regional(split: dict):
    raw = make_raw()  # 8 x 16, global
    assert preprocess(raw, params(split, coarsen=2))[0].attrs["grid"] == "global"
    assert preprocess(raw, params(split, coarsen=3))[0].attrs["grid"] == "regional"


# --- against the independent reference (testdata.reference_preprocess) -------------------------
#
# Four years of data (2000-2003) with masked points, three calendars, and splits chosen so that
# every rule of the climatology is used: two training years (leap and not), two non-leap years
# (standard calendar: day 366 never seen, so it takes day 365's value), and part of one year
# (Dec-Feb unseen: filled from the last seen day, wrapping round the year for Jan and Feb).
SPLITS = {
    "two_years": {
        "train": ["2000-01-01", "2001-12-31"],
        "val": ["2002-01-01", "2002-06-30"],
        "test": ["2002-07-01", "2002-12-31"],
    },
    "non_leap": {
        "train": ["2001-01-01", "2002-12-31"],
        "val": ["2003-01-01", "2003-06-30"],
        "test": ["2003-07-01", "2003-12-30"],
    },
    "part_year": {
        "train": ["2000-03-01", "2000-11-30"],
        "val": ["2000-12-01", "2001-02-28"],
        "test": ["2001-03-01", "2001-06-30"],
    },
}
CLIMATOLOGIES = [("dayofyear", 1), ("dayofyear", 15), ("dayofyear", 31), ("month", 1)]
# Not day of year with window 1 on part of a year: one sample per day makes every anomaly 0,
# which preprocess refuses (no variability).
CASES = [
    (kind, window, name)
    for kind, window in CLIMATOLOGIES
    for name in SPLITS
    if (kind, window, name) != ("dayofyear", 1, "part_year")
]


@pytest.fixture(scope="module", params=["standard", "noleap", "360_day"])
def masked_raw(request: pytest.FixtureRequest) -> xr.Dataset:
    """Four years with a point masked throughout (the contract's mask, constant in time) and,
    beyond the contract, one point missing every April and 1 % missing at random: per-point
    counts, and periods with no value at a point (NaN there with window 1)."""
    calendar = None if request.param == "standard" else request.param
    raw = make_raw(n_days=1440, calendar=calendar)
    raw["t2m"][:, 0, 0] = np.nan
    raw["z500"][(raw["time"].dt.month == 4).values, 3, 5] = np.nan
    scattered = np.random.default_rng(1).random(raw["t2m"].shape) < 0.01
    raw["t2m"].values[scattered] = np.nan
    return raw


@pytest.mark.parametrize(("kind", "window", "split_name"), CASES)
def test_matches_the_independent_reference(
    masked_raw: xr.Dataset, kind: str, window: int, split_name: str
):
    p = params(SPLITS[split_name], climatology=kind, climatology_window=window)
    out, _ = preprocess(masked_raw.chunk(time=200), p)
    ref = reference_preprocess(masked_raw, p)
    # the premises: some periods unseen where the split says so, masked points stay masked
    period, n = reference_periods(masked_raw["time"], kind)
    unseen = set(range(1, n + 1)) - set(period[ref["split"].values == "train"])
    leap_day_unseen = kind == "dayofyear" and split_name == "non_leap" and n == 366
    assert bool(unseen) == (split_name == "part_year" or leap_day_unseen), unseen
    assert np.isnan(ref["anomaly"].sel(variable="t2m").values[:, 0, 0]).all()
    assert_matches_reference(out.load(), ref, masked_raw)


@pytest.mark.parametrize("window", [2, 183])
def test_even_and_widest_windows_match_the_reference(window: int):
    """An even window has one day more before the day than after it; 183 is the schema's most."""
    raw = make_raw(n_days=1440)
    p = params(SPLITS["two_years"], climatology="dayofyear", climatology_window=window)
    out, _ = preprocess(raw, p)
    assert_matches_reference(out.load(), reference_preprocess(raw, p), raw)


def test_bit_identical_across_chunking_and_workers(raw: xr.Dataset, split: dict, monkeypatch):
    from hpcpipe import chunking

    # small canonical blocks so that the reductions really run over several blocks
    monkeypatch.setattr(chunking, "time_chunk_length", lambda n, step_bytes: 100)
    p = params(split, climatology="dayofyear", climatology_window=31)
    with dask.config.set(scheduler="threads", num_workers=2):
        a = preprocess(raw.chunk(time=30), p)[0].load()
    with dask.config.set(scheduler="synchronous"):
        b = preprocess(raw.chunk(time=548), p)[0].load()
    with dask.config.set(scheduler="threads", num_workers=1):
        c = preprocess(raw.chunk(time=7), p)[0].load()
    xr.testing.assert_identical(a, b)
    xr.testing.assert_identical(a, c)


def test_dayofyear_climatology_covers_every_day_with_cftime(split: dict):
    raw = make_raw(calendar="360_day", n_days=540)
    out, _ = preprocess(raw, params(split, climatology="dayofyear", climatology_window=15))
    assert out.sizes["period"] == 360 and np.isfinite(out["climatology"].values).all()


def test_thresholds_are_training_quantiles(raw: xr.Dataset, split: dict):
    out, _ = preprocess(raw, params(split))
    ds = thresholds(out, {"extreme_quantile": 0.9})
    check_thresholds(ds)
    q = ds["quantile"].load()
    train = out["anomaly"].sel(time=slice(*split["train"])).load()
    xr.testing.assert_allclose(
        q, train.quantile(0.9, dim="time").drop_vars("quantile").astype("float32"), rtol=1e-5
    )
