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
