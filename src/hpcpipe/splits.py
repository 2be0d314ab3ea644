"""Time splits and the samples they hold: one rule for config, ingest, preprocess and features.

A split period [i0, i1) (time indices, end exclusive) holds the initial times t whose lags
t-l exist anywhere in the data (lags may reach back before the period) and whose targets
t+L lie inside the period (no leakage into the next period).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcpipe.contracts import DatasetError

if TYPE_CHECKING:  # the config check imports this module: keep xarray's second out of it
    import xarray as xr


def sample_range(
    bounds: tuple[int, int], lags: Sequence[int], leads: Sequence[int]
) -> tuple[int, int]:
    """[s0, s1): the initial times of a period's samples (empty when s1 <= s0)."""
    i0, i1 = bounds
    return max(i0, max(lags)), i1 - max(leads)


def sample_count(bounds: tuple[int, int], lags: Sequence[int], leads: Sequence[int]) -> int:
    s0, s1 = sample_range(bounds, lags, leads)
    return max(0, s1 - s0)


def split_indices(
    ds: xr.Dataset, split: dict[str, list[str]], name: str
) -> dict[str, tuple[int, int]]:
    """[start, stop) time indices of each split period (inclusive dates in the config)."""
    times = ds.indexes["time"]
    out = {}
    for part, (start, end) in split.items():
        idx = np.nonzero(
            (times >= _as_time(start, times)) & (times <= _as_time(end, times, end=True))
        )[0]
        if idx.size == 0:
            raise DatasetError(
                f"{name}: preprocess.split.{part} ({start}..{end}) contains no time step "
                f"(data cover {times[0]}..{times[-1]})"
            )
        out[part] = (int(idx[0]), int(idx[-1]) + 1)
    return out


def _as_time(text: str, times: Any, end: bool = False) -> Any:
    import xarray as xr

    # Compare in the index's own type so cftime calendars work.
    if isinstance(times, xr.CFTimeIndex):
        import cftime

        y, m, d = (int(x) for x in text.split("-"))
        cal = times.calendar
        if end:
            return cftime.datetime(
                y, m, min(d, 30 if cal == "360_day" else d), 23, 59, 59, calendar=cal
            )
        return cftime.datetime(y, m, min(d, 30 if cal == "360_day" else d), calendar=cal)
    t = np.datetime64(text)
    return t + np.timedelta64(1, "D") - np.timedelta64(1, "ns") if end else t


def labels(n_time: int, bounds: dict[str, tuple[int, int]]) -> np.ndarray:
    """The split name of every time step ('' outside every period): the store's ``split``."""
    out = np.full(n_time, "", dtype="<U5")
    for part, (i0, i1) in bounds.items():
        out[i0:i1] = part
    return out


def period_bounds(split_labels: np.ndarray, part: str) -> tuple[int, int] | None:
    """[i0, i1) of ``part`` in a store's ``split`` labels, or None when it has no step."""
    where = np.nonzero(split_labels == part)[0]
    return None if where.size == 0 else (int(where[0]), int(where[-1]) + 1)
