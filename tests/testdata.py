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
