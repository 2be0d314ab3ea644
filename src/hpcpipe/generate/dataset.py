"""The built-in dataset as a lazy Dask-backed Dataset: grid, calendar, mean state and chunks.

``x(t, lat, lon) = base(lat) + season(lat, doy(t)) + scale_v * a_v(t, lat, lon)``, the
anomaly ``a_v`` from :mod:`hpcpipe.generate.spectral`. One Dask task per time chunk computes
every field of it (t2m needs z500 anyway) from the generation blocks that overlap it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from hpcpipe.chunking import axis_chunks, generated_chunk_days
from hpcpipe.generate.fields import FIELDS
from hpcpipe.generate.spectral import BLOCK_DAYS, simulate_block, spectral_model, to_grid

SOURCE = "hpcpipe builtin"

_EPOCH = np.datetime64("1970-01-01", "D")
_PARAM_KEYS = ("seed", "start", "n_days", "n_lat", "n_lon")
# Seasonal cycle by 0-based day of year: -1 in mid-January, +1 in mid-July.
_CYCLE = -np.cos(2.0 * np.pi * (np.arange(366) - 15.0) / 365.25)


def latitudes(n_lat: int) -> np.ndarray:
    """Cell-centre latitudes, south to north."""
    d = 180.0 / n_lat
    return -90.0 + d * (np.arange(n_lat) + 0.5)


def longitudes(n_lon: int) -> np.ndarray:
    """Longitudes 0 .. 360 - dlon."""
    return (360.0 / n_lon) * np.arange(n_lon)


def mean_state(name: str, lat: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Base state plus seasonal cycle (time, lat) for datetime64 ``days``, float64."""
    spec = FIELDS[name]
    s = np.sin(np.deg2rad(np.asarray(lat, np.float64)))
    d = np.asarray(days).astype("datetime64[D]")
    doy = (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    # A fixed table (not np.cos on a chunk-sized array) keeps the values chunk-independent.
    return (spec.base - spec.pole_drop * s**2)[None, :] + spec.seasonal_amp * (
        _CYCLE[doy][:, None] * s[None, :]
    )


def _generate_chunk(
    *,
    seed: int,
    start_day: int,
    n_lat: int,
    n_lon: int,
    variables: tuple[str, ...],
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    """One Dask chunk (n_vars, days, lat, lon) float32: the blocks overlapping it, sliced."""
    assert block_info is not None
    (_, _), (i0, i1), _, _ = block_info[None]["array-location"]
    d0, d1 = start_day + i0, start_day + i1  # absolute days since 1970-01-01
    model = spectral_model(n_lat, n_lon)
    names = tuple(n for n in FIELDS if n in variables or (n == "z500" and "t2m" in variables))
    lat = latitudes(n_lat)
    days = _EPOCH + np.arange(d0, d1)
    means = {n: mean_state(n, lat, days) for n in variables}
    out = np.empty((len(variables), d1 - d0, n_lat, n_lon), np.float32)
    buf = np.zeros((n_lat, n_lon // 2 + 1), np.complex128)

    def emit(day: int, state: dict[str, np.ndarray]) -> None:
        j = day - d0
        for v, name in enumerate(variables):
            anom = to_grid(model, state[name], buf)
            out[v, j] = (means[name][j][:, None] + model.scale[name] * anom).astype(np.float32)

    for block in range(d0 // BLOCK_DAYS, (d1 - 1) // BLOCK_DAYS + 1):
        simulate_block(model, seed, block, d1, names, emit, first=d0)
    return out


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def _start_day(start: Any) -> int:
    """dataset.builtin.start (an ISO date, or a date from YAML) as days since 1970-01-01."""
    try:
        if isinstance(start, dt.datetime | pd.Timestamp) or not isinstance(start, dt.date | str):
            raise TypeError
        day = np.datetime64(start, "D")
        if isinstance(start, str) and str(day) != start.strip():
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"dataset.builtin.start must be an ISO date YYYY-MM-DD, got {start!r}"
        ) from exc
    return int((day - _EPOCH).astype(np.int64))


def _check_params(params: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """Validate dataset.builtin; returns seed, start day (since 1970), n_days, n_lat, n_lon."""
    missing = [k for k in _PARAM_KEYS if k not in params]
    unknown = sorted(set(params) - set(_PARAM_KEYS))
    if missing or unknown:
        raise ValueError(
            f"dataset.builtin: missing keys {missing}, unknown keys {unknown} "
            f"(expected {list(_PARAM_KEYS)})"
        )
    ints = {}
    for key, low in (("seed", 0), ("n_days", 1), ("n_lat", 4), ("n_lon", 4)):
        value = params[key]
        if not _is_int(value) or value < low:
            raise ValueError(f"dataset.builtin.{key} must be an integer >= {low}, got {value!r}")
        ints[key] = int(value)
    start_day = _start_day(params["start"])
    return ints["seed"], start_day, ints["n_days"], ints["n_lat"], ints["n_lon"]


def _check_variables(variables: Sequence[str]) -> list[str]:
    if isinstance(variables, str):
        raise ValueError(f"variables must be a list of names, got the string {variables!r}")
    variables = list(variables)
    unknown = [v for v in variables if v not in FIELDS]
    if unknown:
        raise ValueError(
            f"unknown built-in variable(s) {unknown}; dataset.variables must be a subset of "
            f"{list(FIELDS)} with dataset.source: builtin"
        )
    if not variables or len(set(variables)) != len(variables):
        raise ValueError(f"dataset.variables must be non-empty and unique, got {variables}")
    return variables


def generate_dataset(
    params: Mapping[str, Any], variables: Sequence[str], chunk_days: int | None = None
) -> xr.Dataset:
    """The built-in dataset as a lazy Dask-backed Dataset (time, lat, lon), float32.

    ``params`` is the config section dataset.builtin (seed, start, n_days, n_lat, n_lon);
    ``variables`` a subset of FIELDS in output order; ``chunk_days`` the time chunk length
    (default: chunking.generated_chunk_days). Values do not depend on ``chunk_days`` or the
    scheduler.
    """
    seed, start_day, n_days, n_lat, n_lon = _check_params(params)
    variables = _check_variables(variables)
    if chunk_days is None:
        chunk_days = generated_chunk_days(n_lat, n_lon, len(variables), BLOCK_DAYS, n_days=n_days)
    if not _is_int(chunk_days) or chunk_days < 1:
        raise ValueError(f"chunk_days must be a positive integer, got {chunk_days!r}")
    data = da.map_blocks(
        _generate_chunk,
        chunks=((len(variables),), axis_chunks(n_days, chunk_days), (n_lat,), (n_lon,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        seed=seed,
        start_day=start_day,
        n_lat=n_lat,
        n_lon=n_lon,
        variables=tuple(variables),
    )
    time = (_EPOCH + np.arange(start_day, start_day + n_days)).astype("datetime64[ns]")
    coords = {
        "time": ("time", time, {"standard_name": "time"}),
        "lat": ("lat", latitudes(n_lat), {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", longitudes(n_lon), {"units": "degrees_east", "standard_name": "longitude"}),
    }
    data_vars = {
        name: (
            ("time", "lat", "lon"),
            data[i],
            {"units": FIELDS[name].units, "long_name": FIELDS[name].long_name},
        )
        for i, name in enumerate(variables)
    }
    return xr.Dataset(
        data_vars, coords=coords, attrs={"source": SOURCE, "seed": seed, "grid": "global"}
    )
