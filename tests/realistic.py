"""Generated files shaped like the datasets scientists bring (no downloads).

Each maker writes a small NetCDF file and returns the config overlay a user would write for
it: seasonal means one value per year (a regional ocean box with a land mask, ascending
latitude), a 500 hPa box across 0 degrees with a singleton pressure dimension and bounds
variables, monthly noleap global data, 6-hourly global data with a diurnal cycle, a level
selection and a cyclic point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr


def _wave(n_time: int, n_lat: int, n_lon: int, seed: int, speed: float = 1.0) -> np.ndarray:
    """A field moving eastwards by ``speed`` cells a step, plus a little noise: a model that
    sees two lags can forecast it (persistence cannot)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_time)[:, None, None]
    x = np.arange(n_lon)[None, None, :]
    y = np.arange(n_lat)[None, :, None]
    k = 2 * np.pi / max(n_lon, 8)
    field = np.sin(k * (x - speed * t)) * np.cos(np.pi * (y + 0.5) / n_lat)
    return field + 0.1 * rng.standard_normal((n_time, n_lat, n_lon))


def _lat(n: int, south: float = -90, north: float = 90) -> np.ndarray:
    return south + (np.arange(n) + 0.5) * (north - south) / n


def _split(train: tuple[str, str], val: tuple[str, str], test: tuple[str, str]) -> dict:
    return {"train": list(train), "val": list(val), "test": list(test)}


def _overlay(path: Path, variables: list[str], split: dict, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dataset": {"source": "file", "variables": variables},
        "ingest": {"path": str(path)},
        "preprocess": {"split": split},
    }
    for key, section in extra.items():
        out.setdefault(key, {}).update(section)
    return out


def yearly_ocean_box(d: Path) -> dict[str, Any]:
    """Seasonal (DJF) means, one a year, standard calendar, labelled mid-season (365 and
    365.5-day steps); a regional box with land as NaN and ascending latitude."""
    years = range(1960, 2010)
    time = pd.DatetimeIndex([pd.Timestamp(y, 1, 15) + pd.Timedelta(hours=12 * (y % 4 == 0))
                             for y in years])  # fmt: skip
    n_lat, n_lon = 8, 16
    sst = 15 + _wave(len(time), n_lat, n_lon, 1)
    sst[:, :2, :3] = np.nan  # land
    ds = xr.Dataset(
        {"sst": (("time", "lat", "lon"), sst.astype("float32"), {"units": "degC"})},
        coords={"time": time, "lat": _lat(n_lat, 20, 60), "lon": np.arange(n_lon) * 2.0 + 300},
    )
    ds.to_netcdf(d / "sst_djf.nc")
    split = _split(("1960-01-01", "1994-12-31"), ("1995-01-01", "2001-12-31"),
                   ("2002-01-01", "2009-12-31"))  # fmt: skip
    return _overlay(d / "sst_djf.nc", ["sst"], split)


def z500_box_across_zero(d: Path) -> dict[str, Any]:
    """Yearly 500 hPa height over a box from -40 to 35 degrees east, a singleton ``plev``
    dimension and bounds variables, descending latitude (ERA5 style)."""
    years = range(1970, 2010)
    time = pd.DatetimeIndex([pd.Timestamp(y, 7, 2) for y in years])
    n_lat, n_lon = 8, 16
    lon = np.arange(n_lon) * 5.0 - 40
    z = 5500 + 50 * _wave(len(time), n_lat, n_lon, 2)
    lat = _lat(n_lat, 30, 70)[::-1]
    ds = xr.Dataset(
        {
            "zg": (("time", "plev", "lat", "lon"), z[:, None].astype("float32"), {"units": "m"}),
            "lat_bnds": (("lat", "bnds"), np.stack([lat - 2.5, lat + 2.5], axis=1)),
            "lon_bnds": (("lon", "bnds"), np.stack([lon - 2.5, lon + 2.5], axis=1)),
        },
        coords={"time": time, "plev": [50000.0], "lat": lat, "lon": lon},
    )
    ds.to_netcdf(d / "zg500.nc")
    split = _split(("1970-01-01", "1997-12-31"), ("1998-01-01", "2002-12-31"),
                   ("2003-01-01", "2009-12-31"))  # fmt: skip
    return _overlay(d / "zg500.nc", ["z500"], split, ingest={"rename": {"z500": "zg"}})


def monthly_noleap(d: Path) -> dict[str, Any]:
    """Monthly means at month starts in the noleap calendar, global, with a seasonal cycle."""
    time = xr.date_range("2000-01-01", periods=12 * 12, freq="MS", calendar="noleap",
                         use_cftime=True)  # fmt: skip
    n_lat, n_lon = 8, 16
    season = 5 * np.cos(2 * np.pi * (np.arange(len(time)) % 12) / 12)[:, None, None]
    t2m = 280 + season + _wave(len(time), n_lat, n_lon, 3)
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m.astype("float32"), {"units": "K"})},
        coords={"time": time, "lat": _lat(n_lat), "lon": np.arange(n_lon) * 22.5},
    )
    ds.to_netcdf(d / "monthly.nc")
    split = _split(("2000-01-01", "2008-12-31"), ("2009-01-01", "2010-06-30"),
                   ("2010-07-01", "2011-12-31"))  # fmt: skip
    return _overlay(d / "monthly.nc", ["t2m"], split)


def six_hourly_diurnal(d: Path, amplitude: float = 3.0) -> dict[str, Any]:
    """6-hourly global data with a diurnal cycle of ``amplitude`` K (local solar time) and a
    cyclic point (0 repeated at 360)."""
    time = pd.date_range("2000-01-01", periods=4 * (366 + 59), freq="6h")
    n_lat, n_lon = 8, 16
    lon = np.arange(n_lon + 1) * 22.5  # 0 .. 360: a cyclic point
    hour = np.asarray(time.hour)[:, None, None] + lon[None, None, :] / 15
    diurnal = amplitude * np.cos(2 * np.pi * (hour - 15) / 24)
    wave = _wave(len(time), n_lat, n_lon, 4, speed=0.25)
    wave = np.concatenate([wave, wave[..., :1]], axis=-1)
    t2m = 285 + diurnal + wave
    ds = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m.astype("float32"), {"units": "K"})},
        coords={"time": time, "lat": _lat(n_lat), "lon": lon},
    )
    ds.to_netcdf(d / "six_hourly.nc")
    split = _split(("2000-01-01", "2000-12-31"), ("2001-01-01", "2001-01-31"),
                   ("2001-02-01", "2001-02-28"))  # fmt: skip
    return _overlay(d / "six_hourly.nc", ["t2m"], split)


def daily_levels(d: Path) -> dict[str, Any]:
    """Daily global data on three pressure levels: ``ingest.select`` picks 500 hPa."""
    time = pd.date_range("2000-01-01", periods=731, freq="D")
    n_lat, n_lon = 8, 16
    z = np.stack([5500 + 50 * _wave(len(time), n_lat, n_lon, 5 + i) for i in range(3)], axis=1)
    ds = xr.Dataset(
        {"z": (("time", "level", "lat", "lon"), z.astype("float32"), {"units": "m"})},
        coords={
            "time": time,
            "level": [850, 500, 250],
            "lat": _lat(n_lat),
            "lon": np.arange(n_lon) * 22.5 - 180,
        },
    )
    ds.to_netcdf(d / "levels.nc")
    split = _split(("2000-01-01", "2001-06-30"), ("2001-07-01", "2001-09-30"),
                   ("2001-10-01", "2001-12-31"))  # fmt: skip
    return _overlay(d / "levels.nc", ["z"], split, ingest={"select": {"level": 500}})


MAKERS = {
    "yearly_ocean_box": yearly_ocean_box,
    "z500_box_across_zero": z500_box_across_zero,
    "monthly_noleap": monthly_noleap,
    "six_hourly_diurnal": six_hourly_diurnal,
    "daily_levels": daily_levels,
}
