"""Small gridded datasets in the canonical form, for unit tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

SPLIT = {
    "train": ["2000-01-01", "2000-12-31"],
    "val": ["2001-01-01", "2001-03-31"],
    "test": ["2001-04-01", "2001-06-30"],
}
# The preprocess step's params for make_raw(): daily climatology, SPLIT.
PREPROCESS_PARAMS = {
    "variables": ["t2m", "z500"],
    "coarsen": 1,
    "climatology": "dayofyear",
    "climatology_window": 31,
    "split": SPLIT,
}


def make_raw(
    n_days: int = 548, n_lat: int = 8, n_lon: int = 16, seed: int = 0, calendar: str | None = None
) -> xr.Dataset:
    """A small (time, lat, lon) dataset with a seasonal cycle, a moving wave and noise."""
    rng = np.random.default_rng(seed)
    if calendar:
        time = xr.date_range(
            "2000-01-01", periods=n_days, freq="D", calendar=calendar, use_cftime=True
        )
        doy = np.asarray(time.dayofyear)
    else:
        time = pd.date_range("2000-01-01", periods=n_days, freq="D")
        doy = np.asarray(time.day_of_year)
    lat = -90 + (np.arange(n_lat) + 0.5) * 180 / n_lat
    lon = np.arange(n_lon) * 360 / n_lon
    season = np.sin(2 * np.pi * doy / 365.25)[:, None, None] * np.sign(lat)[None, :, None]
    t = np.arange(n_days)[:, None, None]
    wave = np.sin(2 * np.pi * (np.arange(n_lon)[None, None, :] - t) / n_lon)
    t2m = 280 + 10 * season + 3 * wave + rng.standard_normal((n_days, n_lat, n_lon))
    z500 = (
        5500
        + 50 * season
        + 40 * np.roll(wave, 2, axis=2)
        + 5 * rng.standard_normal((n_days, n_lat, n_lon))
    )
    return xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), t2m.astype("float32"), {"units": "K"}),
            "z500": (("time", "lat", "lon"), z500.astype("float32"), {"units": "m"}),
        },
        coords={"time": time, "lat": lat, "lon": lon},
    )


def _lazy_block(block: np.ndarray, seed: int, n_lat: int, n_lon: int) -> np.ndarray:
    """One time block of lazy_raw: a seasonal cycle plus noise, seeded by the block's start."""
    t = block[:, 0, 0]
    rng = np.random.default_rng([seed, int(t[0])])
    season = np.sin(2 * np.pi * t / 365.25)[:, None, None]
    noise = rng.standard_normal((len(t), n_lat, n_lon), dtype=np.float32)
    return (280 + 10 * season + noise).astype(np.float32)


def lazy_raw(
    n_days: int, n_lat: int = 32, n_lon: int = 64, chunk_days: int = 512, seed: int = 0
) -> xr.Dataset:
    """A (time, lat, lon) dataset of any size, built chunk by chunk with Dask (never in memory)."""
    import dask.array as da

    steps = da.arange(n_days, chunks=chunk_days, dtype=np.float64)[:, None, None]
    shape = (n_days, n_lat, n_lon)
    steps = da.broadcast_to(steps, shape, chunks=(chunk_days, n_lat, n_lon))
    fields = {
        name: steps.map_blocks(_lazy_block, seed + i, n_lat, n_lon, dtype=np.float32)
        for i, name in enumerate(("t2m", "z500"))
    }
    time = pd.date_range("1900-01-01", periods=n_days, freq="D")
    lat = -90 + (np.arange(n_lat) + 0.5) * 180 / n_lat
    lon = np.arange(n_lon) * 360 / n_lon
    return xr.Dataset(
        {k: (("time", "lat", "lon"), v, {"units": "1"}) for k, v in fields.items()},
        coords={"time": time, "lat": lat, "lon": lon},
    )


# --- an independent reference for preprocess ----------------------------------------------------
#
# Plain xarray groupby and NumPy, written from the documented rules (docs/data-contracts.md,
# config.schema.yaml's preprocess section, preprocess.py's docstrings), sharing no code with
# hpcpipe; the number of periods comes from the calendar itself. Per-period sums and
# counts of the finite training values, a circular moving sum of both for the day of year
# (window w: the w days from p - w//2 to p + w - 1 - w//2, wrapping around the year), a period
# with no data anywhere taking the previous period's value (wrapping), then anomalies normalised
# by the mean and std of the training anomalies. Everything in float64.

# The preprocessed store is float32: one rounding there is a relative error of at most 2**-24
# (6e-8). CLIM_RTOL = 1e-5 allows about 100 such roundings: the climatology is rounded to float32,
# coarsening averages float32 values in float32, and the per-period sums are at present
# accumulated in float32 within a block (4.5e-7 measured for month periods of ~60 days). A real
# mistake moves it far more: a day too many or too few in the 31-day window moves the
# climatology by up to 1e-3 of its value (2e-4 typical), a period's count off by one by 1/count
# (over 1 % here).
CLIM_RTOL = 1e-5
# std is float64 in both; they differ through the float32 climatology only (4e-8 measured).
# 1e-6 still tells a population std from a sample one (ddof=1: 1/(2N) = 5e-6 for the ~1e5
# training values per variable of these tests).
STATS_RTOL = 1e-6
# The normalised anomaly (x - clim) / std is checked in absolute terms (it passes through 0):
# its error is the climatology's (measured against the reference) plus the float32 resolution
# of x - clim, about eps32 * |x| (half an ulp of each); ANOM_ULPS ulps of that leave room for
# the output's own rounding.
ANOM_ULPS = 4.0


def _date_key(time: xr.DataArray) -> np.ndarray:
    """yyyymmdd of each time: compares dates in any calendar (360_day has 30 Feb)."""
    return (time.dt.year * 10000 + time.dt.month * 100 + time.dt.day).values


def _as_key(text: str) -> int:
    y, m, d = (int(p) for p in text.split("-"))
    return y * 10000 + m * 100 + d


def reference_periods(time: xr.DataArray, kind: str) -> tuple[np.ndarray, int]:
    """1-based period of each time and the number of periods in the calendar's year."""
    if kind == "month":
        return time.dt.month.values, 12
    if kind != "dayofyear":
        raise ValueError(kind)
    # The longest year the calendar has: 366 (leap years), 365 (noleap) or 360 (360_day).
    calendar = time.dt.calendar
    days = xr.date_range(
        "2000-01-01", periods=4 * 366, freq="D", calendar=calendar, use_cftime=True
    )
    return time.dt.dayofyear.values, int(days.dayofyear.max())


def _circular_window_sum(a: np.ndarray, window: int) -> np.ndarray:
    """Sum over the periods p - window//2 .. p + window - 1 - window//2 (mod the year)."""
    return sum(np.roll(a, -j, axis=0) for j in range(-(window // 2), window - window // 2))


def _fill_empty_periods(clim: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """A period without any finite value (any variable or point) takes the previous seen one's."""
    n = clim.shape[0]
    seen = np.flatnonzero(counts.reshape(n, -1).sum(axis=1) > 0)
    # previous seen period of each p, wrapping round to the last one of the year
    prev = seen[np.searchsorted(seen, np.arange(n), side="right") - 1]
    return clim[prev]


def reference_preprocess(raw: xr.Dataset, params: dict) -> xr.Dataset:
    """What preprocess must compute, in float64: anomaly, climatology, mean, std, split."""
    names = list(params["variables"])
    x = raw[names].to_array("variable").transpose("time", "variable", "lat", "lon")
    x = x.astype(np.float64).load()
    if params["coarsen"] > 1:
        c = params["coarsen"]
        x = x.coarsen(lat=c, lon=c, boundary="trim").mean()
    key = _date_key(x["time"])
    split = np.full(x.sizes["time"], "", dtype="<U5")
    for part, (start, end) in params["split"].items():
        split[(key >= _as_key(start)) & (key <= _as_key(end))] = part
    train = x.isel(time=np.flatnonzero(split == "train"))
    period, n = reference_periods(x["time"], params["climatology"])
    group = xr.DataArray(period[split == "train"], dims="time", name="period")
    full = {"period": np.arange(1, n + 1)}
    sums = train.fillna(0.0).groupby(group).sum("time").reindex(full, fill_value=0.0)
    counts = train.notnull().groupby(group).sum("time").reindex(full, fill_value=0)
    sums, counts = sums.values, counts.values.astype(np.float64)
    if params["climatology"] == "dayofyear":
        w = params["climatology_window"]
        sums, counts = _circular_window_sum(sums, w), _circular_window_sum(counts, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        clim = _fill_empty_periods(sums / counts, counts)
    anom = x.values - clim[period - 1]
    a_train = anom[split == "train"]
    mean = np.nanmean(a_train, axis=(0, 2, 3))
    std = np.nanstd(a_train, axis=(0, 2, 3))
    norm = (anom - mean[None, :, None, None]) / std[None, :, None, None]
    space = {k: x[k] for k in ("variable", "lat", "lon")}
    return xr.Dataset(
        {
            "anomaly": (("time", "variable", "lat", "lon"), norm),
            "climatology": (("period", "variable", "lat", "lon"), clim),
            "mean": ("variable", mean),
            "std": ("variable", std),
        },
        coords={**space, "time": x["time"], "period": full["period"], "split": ("time", split)},
    )


def assert_matches_reference(out: xr.Dataset, ref: xr.Dataset, raw: xr.Dataset) -> None:
    """preprocess's output equals the reference within the float32 tolerances above."""
    np.testing.assert_array_equal(out["split"].values, ref["split"].values)
    np.testing.assert_array_equal(out["period"].values, ref["period"].values)
    assert list(out["variable"].values) == list(ref["variable"].values)
    got_clim = out["climatology"].transpose(*ref["climatology"].dims).values.astype(np.float64)
    want_clim = ref["climatology"].values
    np.testing.assert_array_equal(np.isnan(got_clim), np.isnan(want_clim), "masked periods")
    np.testing.assert_allclose(got_clim, want_clim, rtol=CLIM_RTOL, err_msg="climatology")
    np.testing.assert_allclose(out["std"].values, ref["std"].values, rtol=STATS_RTOL)
    got = out["anomaly"].transpose(*ref["anomaly"].dims).values.astype(np.float64)
    want = ref["anomaly"].values
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), "masked points differ")
    for v, name in enumerate(ref["variable"].values):
        resolution = ANOM_ULPS * np.finfo(np.float32).eps * float(np.nanmax(np.abs(raw[str(name)])))
        clim_error = float(np.nanmax(np.abs(got_clim[:, v] - want_clim[:, v])))
        atol = clim_error + resolution  # physical units
        # the training mean of the anomalies is about 0 (exactly 0 without smoothing)
        assert abs(float(out["mean"][v]) - float(ref["mean"][v])) <= atol, (name, out["mean"])
        np.testing.assert_allclose(
            got[:, v], want[:, v], rtol=STATS_RTOL, atol=atol / float(ref["std"][v]),
            err_msg=f"anomaly of {name}",
        )  # fmt: skip
