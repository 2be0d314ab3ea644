"""Climatology periods: which period (day of year, month) a time falls in.

One rule for preprocess (which builds the climatology) and evaluate (which looks it up for
the test times), for datetime64 and cftime calendars alike.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

KINDS = ("dayofyear", "month")
# Days in a year per calendar (standard and Julian-like calendars have a 366th day).
_DAYS = {"360_day": 360, "noleap": 365, "365_day": 365}


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(
            f"unknown climatology period kind {kind!r} (expected 'dayofyear' or 'month')"
        )


def period_of(times: xr.DataArray, kind: str) -> xr.DataArray:
    """1-based climatology period of each time (any dims), as stored in ``period``."""
    _check(kind)
    return times.dt.dayofyear if kind == "dayofyear" else times.dt.month


def period_index(time: xr.DataArray, kind: str) -> tuple[np.ndarray, int]:
    """0-based climatology period of each time along ``time`` and the number of periods."""
    _check(kind)
    if kind == "month":
        return period_of(time, kind).values.astype(np.int64) - 1, 12
    calendar = getattr(time.to_index(), "calendar", "standard")
    return period_of(time, kind).values.astype(np.int64) - 1, _DAYS.get(calendar, 366)
