"""The time axis: calendar-aware frequencies, gaps named, the climatology each calls for."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hpcpipe.contracts import DatasetError
from hpcpipe.periods import hours_of_day, period_index
from hpcpipe.timeaxis import climatology_for, infer, period_problems

CALENDARS = ("standard", "noleap", "360_day", "julian", "all_leap", "proleptic_gregorian")
FREQUENCIES = {
    "h": "subdaily", "6h": "subdaily", "D": "daily", "MS": "monthly", "ME": "monthly",
    "QS-DEC": "seasonal", "YS": "yearly", "YE": "yearly",
}  # fmt: skip


def _times(freq: str, calendar: str = "standard", n: int = 40) -> xr.CFTimeIndex | pd.Index:
    cf = calendar != "standard"
    return xr.date_range("2000-01-01", periods=n, freq=freq, calendar=calendar, use_cftime=cf)


@pytest.mark.parametrize("calendar", CALENDARS)
@pytest.mark.parametrize("freq", FREQUENCIES)
def test_every_regular_frequency_in_every_calendar(freq: str, calendar: str):
    axis = infer(_times(freq, calendar), "f.nc")
    assert axis.resolution == FREQUENCIES[freq]
    assert axis.attrs()["time_resolution"] == FREQUENCIES[freq]


def test_mid_month_and_mid_season_labels_are_regular():
    starts = pd.date_range("2000-01-01", periods=25, freq="MS")
    ends = pd.date_range("2000-02-01", periods=25, freq="MS")
    assert infer(starts + (ends - starts) / 2, "f.nc").resolution == "monthly"
    # one seasonal mean a year, labelled mid-season: 365 and 365.5-day steps
    yearly = pd.DatetimeIndex(
        [pd.Timestamp(y, 1, 15) + pd.Timedelta(hours=12 * (y % 4 == 0)) for y in range(1990, 2010)]
    )
    axis = infer(yearly, "f.nc")
    assert (axis.resolution, axis.months) == ("yearly", 12)


@pytest.mark.parametrize(
    ("times", "message"),
    [
        (_times("6h").delete([7, 8]), "2 step(s) are missing, the first at 2000-01-02 18:00:00"),
        (_times("D", "noleap").delete([3]), "the first at 2000-01-04"),
        (_times("MS", "360_day").delete([5]), "the first in 2000-06"),
        (_times("YS").delete([2]), "the first in 2002-01"),
    ],
)
def test_a_gap_names_the_first_missing_time(times, message: str):
    with pytest.raises(DatasetError, match="a gap in time") as err:
        infer(times, "f.nc")
    assert message in str(err.value) and "f.nc" in str(err.value)


def test_an_irregular_step_is_named():
    t = _times("D").insert(5, pd.Timestamp("2000-01-05 12:00"))
    with pytest.raises(DatasetError, match="the time step is irregular"):
        infer(t, "f.nc")


def test_climatology_auto_by_frequency_and_a_misfit_named():
    assert [climatology_for("auto", r) for r in ("subdaily", "daily", "monthly", "yearly")] == [
        "hour_dayofyear", "dayofyear", "month", "mean",
    ]  # fmt: skip
    with pytest.raises(DatasetError, match=r"'dayofyear' does not fit .* monthly"):
        climatology_for("dayofyear", "monthly")
    with pytest.raises(DatasetError, match="'hour_dayofyear' does not fit"):
        climatology_for("hour_dayofyear", "daily")


def test_a_period_past_the_data_is_named():
    times = _times("MS", n=24)  # 2000-01 .. 2001-12
    axis = infer(times, "f.nc")
    ok = {"train": ["2000-01-01", "2001-12-31"]}
    assert period_problems(times, axis, ok, "f.nc") == []
    late = {"test": ["2001-06-01", "2002-01-31"]}
    assert "preprocess.split.test" in period_problems(times, axis, late, "f.nc")[0]
    daily = _times("D", n=10)
    d_axis = infer(daily, "f.nc")
    assert period_problems(daily, d_axis, {"val": ["2000-01-01", "2000-01-10"]}, "f.nc") == []
    assert period_problems(daily, d_axis, {"val": ["2000-01-01", "2000-01-11"]}, "f.nc")


def test_sub_daily_data_starting_mid_day_name_the_whole_days():
    times = pd.date_range("2000-01-01T12:00", periods=4 * 30, freq="6h")  # .. 01-31 06:00
    axis = infer(times, "f.nc")
    (problem,) = period_problems(times, axis, {"train": ["2000-01-01", "2000-01-20"]}, "f.nc")
    assert "splits take whole days: from 2000-01-02 to 2000-01-30" in problem
    assert period_problems(times, axis, {"train": ["2000-01-02", "2000-01-30"]}, "f.nc") == []


def test_hour_of_day_periods():
    time = xr.DataArray(_times("6h", "noleap", n=8), dims="time")
    hours = hours_of_day(time)
    idx, n = period_index(time, "hour_dayofyear", hours)
    assert hours == [0, 6, 12, 18] and n == 365 * 4
    np.testing.assert_array_equal(idx, np.arange(8))


def test_fixed_length_calendar_months_and_years_are_months_not_days():
    """infer_freq calls 360_day mid-months "30D" and noleap mid-years "365D"."""
    import cftime
    import xarray as xr

    from hpcpipe.timeaxis import infer

    mid_month = xr.CFTimeIndex(
        [cftime.Datetime360Day(2000 + i // 12, i % 12 + 1, 16) for i in range(36)]
    )
    mid_year = xr.CFTimeIndex([cftime.DatetimeNoLeap(2000 + i, 7, 2) for i in range(30)])
    assert (infer(mid_month, "x").resolution, infer(mid_month, "x").months) == ("monthly", 1)
    assert (infer(mid_year, "x").resolution, infer(mid_year, "x").months) == ("yearly", 12)
