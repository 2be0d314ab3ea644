"""The time axis: its calendar-aware frequency, gaps in it, and the climatology it calls for.

Any regular frequency in any cftime calendar: hourly and n-hourly, daily, monthly (month
starts, month ends, mid-months), seasonal and yearly. A frequency with a fixed length (hours,
days) is a fixed step; months, seasons and years are a fixed number of calendar months, so
that 28- and 31-day months, or 365- and 366-day years, are one step. Times labelled inside
their period (mid-month, mid-season) are regular when every step is the same number of
calendar months. A real gap is an error that names the first missing time.

Lags and leads stay in time steps. The ``resolution`` of an axis picks the climatology of
``preprocess.climatology: auto``; this module's climatology rules are plain Python, for the
config check (which never imports xarray).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcpipe.contracts import DatasetError

if TYPE_CHECKING:
    import pandas as pd

RESOLUTIONS = ("subdaily", "daily", "monthly", "seasonal", "yearly")
CLIMATOLOGIES = ("hour_dayofyear", "dayofyear", "month", "mean")
# preprocess.climatology: auto, by resolution (WeatherBench 2: hour of day x day of year for
# sub-daily data, so that the diurnal cycle is not left in the anomalies).
AUTO = {
    "subdaily": "hour_dayofyear",
    "daily": "dayofyear",
    "monthly": "month",
    "seasonal": "mean",
    "yearly": "mean",
}
# The explicit choices that fit each resolution (a period must recur in the data).
FITS = {
    "subdaily": ("hour_dayofyear", "dayofyear", "month", "mean"),
    "daily": ("dayofyear", "month", "mean"),
    "monthly": ("month", "mean"),
    "seasonal": ("month", "mean"),
    "yearly": ("mean",),
}
_MONTHS_PER = {"M": 1, "MS": 1, "ME": 1, "Q": 3, "QS": 3, "QE": 3, "Y": 12, "YS": 12, "YE": 12}
_SUBDAILY = ("h", "H", "min", "T", "s", "S", "ms", "us", "ns")


@dataclass(frozen=True)
class TimeAxis:
    """A regular time axis: ``step`` (fixed length) or ``months`` (calendar months) per step."""

    resolution: str
    frequency: str  # a pandas/cftime alias (6h, D, MS, YS-JAN), or the step in words
    step: Any = None  # pandas.Timedelta for fixed steps
    months: int = 0  # calendar months per step, for monthly, seasonal and yearly data

    def attrs(self) -> dict[str, str]:
        """What the stores record of it (docs/data-contracts.md)."""
        return {"time_frequency": self.frequency, "time_resolution": self.resolution}


def climatology_for(choice: str, resolution: str, where: str = "the data") -> str:
    """The climatology of ``preprocess.climatology`` (``auto`` resolved) for ``resolution``."""
    if choice == "auto":
        return AUTO[resolution]
    if choice not in FITS[resolution]:
        raise DatasetError(
            f"preprocess.climatology: {choice!r} does not fit {where}, which are {resolution} "
            f"(it fits {list(FITS[resolution])}; 'auto' picks {AUTO[resolution]!r})"
        )
    return choice


def _fixed_resolution(step: pd.Timedelta) -> str:
    import pandas as pd

    return "subdaily" if step < pd.Timedelta(days=1) else "daily"


def _month_resolution(months: int) -> str:
    return "monthly" if months == 1 else "yearly" if months % 12 == 0 else "seasonal"


def _from_alias(alias: str, times: Any) -> TimeAxis:
    import pandas as pd

    m = re.fullmatch(r"(\d*)([A-Za-z]+)(-[A-Za-z]+)?", alias)
    n, base = (int(m.group(1) or 1), m.group(2)) if m else (1, alias)
    if base in _MONTHS_PER:
        months = n * _MONTHS_PER[base]
        return TimeAxis(_month_resolution(months), alias, months=months)
    step = pd.Timedelta(_deltas(times)[0])
    # 360_day months are 30 days and noleap years 365: infer_freq says "30D"/"365D" for what
    # are calendar months or years there.
    if step >= pd.Timedelta(days=28) and (months := _month_steps(times)) is not None:
        return TimeAxis(_month_resolution(months), alias, months=months)
    return TimeAxis(_fixed_resolution(step), alias, step=step)


def _deltas(times: Any) -> Any:
    import numpy as np
    import pandas as pd

    return pd.to_timedelta(np.asarray(times[1:] - times[:-1]))


def _month_index(times: Any) -> Any:
    import numpy as np

    return np.asarray(times.year, dtype=np.int64) * 12 + np.asarray(times.month) - 1


def _month_steps(times: Any) -> int | None:
    """Calendar months per step when every step is the same number of months and the days
    between times agree with it (mid-month and mid-season labels); else None."""
    import numpy as np

    dm = np.diff(_month_index(times))
    days = _deltas(times).total_seconds().to_numpy() / 86400
    if dm.size == 0 or dm[0] < 1 or not np.all(dm == dm[0]):
        return None
    k = int(dm[0])
    return k if np.all((days >= 28 * k - 3) & (days <= 31 * k + 3)) else None


def infer(times: Any, where: str) -> TimeAxis:
    """The regular time axis of ``times`` (a DatetimeIndex or CFTimeIndex), or a named error."""
    import xarray as xr

    if len(times) < 3:
        raise DatasetError(
            f"{where}: only {len(times)} time step(s); at least the split periods are needed"
        )
    alias = xr.infer_freq(times)
    if alias is not None:
        return _from_alias(alias, times)
    k = _month_steps(times)
    if k is not None:
        unit = {1: "month", 3: "season of 3 months", 12: "year"}.get(k, f"{k} months")
        return TimeAxis(_month_resolution(k), f"1 {unit} (times inside their period)", months=k)
    raise DatasetError(_irregular(times, where))


def _irregular(times: Any, where: str) -> str:
    """What is wrong with an irregular axis: the first missing time, or the odd step."""
    import numpy as np
    import pandas as pd

    deltas = _deltas(times)
    values, counts = np.unique(np.asarray(deltas), return_counts=True)
    usual = pd.Timedelta(values[np.argmax(counts)])
    if usual >= pd.Timedelta(days=27):  # months: count in calendar months
        dm = np.diff(_month_index(times))
        k = int(np.bincount(dm[dm > 0]).argmax()) if np.any(dm > 0) else 0
        bad = np.flatnonzero(dm != k)
        i = int(bad[0]) if bad.size else 0
        if k and dm[i] > k and dm[i] % k == 0:
            y, m = divmod(int(_month_index(times)[i]) + k, 12)
            return (
                f"{where}: a gap in time after {times[i]}: the step is {k} month(s) but "
                f"{dm[i] // k - 1} step(s) are missing, the first in {y:04d}-{m + 1:02d}; "
                "fill the gap, or give the files without it"
            )
        return (
            f"{where}: the time step is irregular: {times[i]} to {times[i + 1]} is not the "
            f"{k}-month step of the other times; regrid in time first"
        )
    odd = np.flatnonzero(np.asarray(deltas) != values[np.argmax(counts)])
    i = int(odd[0])
    step = deltas[i]
    if step > usual and step % usual == pd.Timedelta(0):
        return (
            f"{where}: a gap in time after {times[i]}: the step is {usual} but "
            f"{step // usual - 1} step(s) are missing, the first at {times[i] + usual}; "
            "fill the gap, or give the files without it"
        )
    return (
        f"{where}: the time step is irregular ({len(values)} different steps, e.g. {usual} "
        f"and {step} from {times[i]}); regrid in time first"
    )


def _fields(t: Any) -> tuple[int, ...]:
    return (t.year, t.month, t.day, t.hour, t.minute, t.second)


def _shift(t: Any, axis: TimeAxis, sign: int) -> tuple[int, ...]:
    """The calendar fields of the time one step before (-1) or after (+1) ``t``."""
    if axis.months:
        y, m = divmod(t.year * 12 + t.month - 1 + sign * axis.months, 12)
        return (y, m + 1, *_fields(t)[2:])
    return _fields(t + sign * axis.step)


def _whole_days(times: Any, axis: TimeAxis) -> str:
    """For sub-daily data, which dates a split may start and end at: splits take whole days,
    and data that start or end mid-day cover their first or last day only in part."""
    if axis.resolution != "subdaily":
        return ""
    midnight = (0, 0, 0)
    first = next((t for t in times if _fields(t)[3:] == midnight), None)
    last = next((t for t in reversed(times) if _fields(t + axis.step)[3:] == midnight), None)
    if first is None or last is None:
        return ""
    day = "{:04d}-{:02d}-{:02d}".format
    return f"; splits take whole days: from {day(*_fields(first)[:3])} to {day(*_fields(last)[:3])}"


def period_problems(times: Any, axis: TimeAxis, split: dict, where: str) -> list[str]:
    """Split periods that run past the data: the period holds the time one step before the
    first or one step after the last, where the data have nothing."""
    before, after = _shift(times[0], axis, -1), _shift(times[-1], axis, +1)
    problems = []
    for part, (start, end) in split.items():
        a = (*map(int, start.split("-")), 0, 0, 0)
        e = (*map(int, end.split("-")), 23, 59, 59)
        if a <= before or e >= after:
            problems.append(
                f"{where}: preprocess.split.{part} ({start}..{end}) runs past the data, "
                f"which cover {times[0]}..{times[-1]} ({axis.frequency} steps)"
                + _whole_days(times, axis)
            )
    return problems
