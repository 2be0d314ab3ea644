"""Climatology periods: which period a time falls in.

One rule for preprocess (which builds the climatology) and evaluate (which looks it up for
the test times), for datetime64 and cftime calendars alike. The kinds:

- ``dayofyear``: 1..366 (365 for noleap and 365_day, 360 for 360_day);
- ``hour_dayofyear``: hour of day x day of year, for sub-daily data (WeatherBench 2), the
  hours being those of the data (``hours``, e.g. [0, 6, 12, 18]): period
  ``(dayofyear - 1) * len(hours) + slot + 1``;
- ``month``: 1..12;
- ``mean``: one period, the training-period mean (seasonal and yearly data).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

KINDS = ("hour_dayofyear", "dayofyear", "month", "mean")
# Days in a year per calendar (standard and Julian-like calendars have a 366th day).
_DAYS = {"360_day": 360, "noleap": 365, "365_day": 365}


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown climatology period kind {kind!r} (expected one of {KINDS})")


def hours_of_day(time: xr.DataArray) -> list[int]:
    """The hours of day the times fall on, ascending (the slots of ``hour_dayofyear``)."""
    return sorted(int(h) for h in np.unique(time.dt.hour.values))


def period_of(times: xr.DataArray, kind: str, hours: Sequence[int] | None = None) -> xr.DataArray:
    """1-based climatology period of each time (any dims), as stored in ``period``."""
    _check(kind)
    if kind == "dayofyear":
        return times.dt.dayofyear
    if kind == "month":
        return times.dt.month
    if kind == "mean":
        return xr.ones_like(times, dtype=np.int64)
    if not hours:
        raise ValueError("hour_dayofyear periods need the hours of day of the climatology")
    table = np.full(24, -(10**6), dtype=np.int64)  # an hour not in ``hours``: no period
    table[list(hours)] = np.arange(len(hours))
    hour = times.dt.hour
    slot = hour.copy(data=table[np.asarray(hour.values)])
    return ((times.dt.dayofyear - 1) * len(hours) + slot + 1).load()


def days_in_year(time: xr.DataArray) -> int:
    """Day-of-year periods of the calendar of ``time``."""
    return _DAYS.get(getattr(time.to_index(), "calendar", "standard"), 366)


def period_index(
    time: xr.DataArray, kind: str, hours: Sequence[int] | None = None
) -> tuple[np.ndarray, int]:
    """0-based climatology period of each time along ``time`` and the number of periods."""
    idx = period_of(time, kind, hours).values.astype(np.int64) - 1
    n = {"month": 12, "mean": 1}.get(kind)
    if n is None:
        n = days_in_year(time) * (len(hours or ()) if kind == "hour_dayofyear" else 1)
    return idx, n
