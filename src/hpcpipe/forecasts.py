"""Stored forecasts: WeatherBench 2's forecast layout on Zarr (written by predict, scored by evaluate).

A forecast store (docs/data-contracts.md) has dims ``time`` (initialisation time),
``prediction_timedelta`` (timedelta64: lead x the data's time step), ``latitude`` and
``longitude``, and one float32 data variable per forecast variable in physical units with a
``units`` attribute; CF attributes on the coordinates. The same layout serves forecasts made
elsewhere (``evaluate.external``): :func:`check_forecast` compares a store with what the
evaluation needs and names every difference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from hpcpipe.evaluate.scoring import SAMPLE, Normalisation, to_normalised, to_physical

DIMS = ("time", "prediction_timedelta", "latitude", "longitude")
LEAD_DIM = "prediction_timedelta"
CONVENTIONS = "CF-1.8"
GRID_ATOL = 1e-6  # degrees: coordinates written as float32 elsewhere still match
# Nominal length of a calendar month (mean Gregorian): the timedelta of a month-based lead.
MONTH = pd.Timedelta(days=30.436875)

COORD_ATTRS = {
    "time": {"standard_name": "forecast_reference_time", "long_name": "initialisation time"},
    LEAD_DIM: {"standard_name": "forecast_period", "long_name": "lead time"},
    "latitude": {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north",
                 "axis": "Y"},
    "longitude": {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east",
                  "axis": "X"},
    "lead": {"long_name": "lead in time steps of the data", "units": "1"},
}  # fmt: skip

StrPath = str | os.PathLike[str]


class ForecastError(ValueError):
    """A forecast store does not fit the evaluation; the message names it, its path and why."""


@dataclass(frozen=True)
class Expected:
    """What a forecast store must hold to be scored; None = not known (not checked)."""

    variables: list[str]
    units: Mapping[str, str] | None = None
    lat: np.ndarray | None = None
    lon: np.ndarray | None = None
    init_times: Any = None  # the initialisations to score (the test samples' times)
    timedeltas: np.ndarray | None = None  # timedelta64[ns], one per lead


def lead_timedeltas(leads: Sequence[int], step: Any = None, months: int = 0) -> np.ndarray:
    """``prediction_timedelta`` of each lead: lead x the time step (a fixed ``step``, or
    ``months`` calendar months counted at their nominal mean length)."""
    unit = pd.Timedelta(step) if step is not None else months * MONTH
    if unit <= pd.Timedelta(0):
        raise ValueError("a forecast's time step must be positive")
    return np.array([int(ld) * unit for ld in leads], dtype="timedelta64[ns]")


def axis_timedeltas(leads: Sequence[int], times: Any, where: str) -> np.ndarray:
    """:func:`lead_timedeltas` for the time axis ``times`` (the data's, any calendar)."""
    from hpcpipe.timeaxis import infer

    axis = infer(times, where)
    return lead_timedeltas(leads, axis.step, axis.months)


def units_of(stats_path: StrPath) -> dict[str, str]:
    """The variables' units from stats.json (preprocess): what forecasts are stored in."""
    try:
        stats = json.loads(Path(stats_path).read_text())["variables"]
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{stats_path}: cannot read the variables' units ({exc})") from exc
    return {str(v): str(s.get("units", "")) for v, s in stats.items()}


def expected(
    test: xr.Dataset, pre: xr.Dataset, variables: Sequence[str], units: Mapping[str, str]
) -> Expected:
    """Everything a store must match to be scored on the test store's samples."""
    leads = [int(x) for x in test["lead"].values]
    return Expected(
        variables=list(variables),
        units=dict(units),
        lat=np.asarray(pre["lat"].values, dtype=np.float64),
        lon=np.asarray(pre["lon"].values, dtype=np.float64),
        init_times=test["time"].values,
        timedeltas=axis_timedeltas(leads, pre.indexes["time"], "preprocessed data"),
    )


# ----------------------------------------------------------------------------- writing


def template(
    test: xr.Dataset,
    variables: Sequence[str],
    units: Mapping[str, str],
    timedeltas: np.ndarray,
    attrs: Mapping[str, Any],
    chunk: int,
) -> xr.Dataset:
    """The whole store, its data lazy (never computed): coordinates, CF attributes, chunks."""
    import dask.array as da

    n, n_lat, n_lon = test.sizes[SAMPLE], test.sizes["lat"], test.sizes["lon"]
    shape = (n, len(timedeltas), n_lat, n_lon)
    chunks = (max(1, min(chunk, n)), len(timedeltas), n_lat, n_lon)
    coords = {
        "time": ("time", test["time"].values),
        LEAD_DIM: (LEAD_DIM, timedeltas),
        "latitude": ("latitude", np.asarray(test["lat"].values, dtype=np.float64)),
        "longitude": ("longitude", np.asarray(test["lon"].values, dtype=np.float64)),
        "lead": (LEAD_DIM, np.asarray(test["lead"].values, dtype=np.int64)),
    }
    data = {
        v: (DIMS, da.zeros(shape, chunks=chunks, dtype=np.float32),
            {"units": units.get(v, ""), "long_name": f"{v} forecast"})
        for v in variables
    }  # fmt: skip
    ds = xr.Dataset(data, coords=coords, attrs={"Conventions": CONVENTIONS, **attrs})
    for name, a in COORD_ATTRS.items():
        ds[name].attrs.update(a)
    return ds


def block(
    pred_norm: np.ndarray, test_block: xr.Dataset, norm: Normalisation, variables: Sequence[str]
) -> xr.Dataset:
    """One block of predictions (sample, lead, variable, lat, lon; normalised anomalies) as
    the store's data variables in physical units, NaN where the data are masked."""
    coords = {k: test_block[k] for k in (SAMPLE, "lead", "variable", "lat", "lon")}
    a = xr.DataArray(pred_norm, dims=("sample", "lead", "variable", "lat", "lon"), coords=coords)
    sel = {"variable": list(variables)}
    mask = test_block["mask"].sel(sel).astype(bool)
    c = norm.at(test_block["valid_time"])
    x = to_physical(a.sel(sel).astype(np.float64), norm.mean, norm.std, c).where(mask)
    x = x.transpose(SAMPLE, "lead", "variable", "lat", "lon")
    return xr.Dataset({v: (DIMS, x.sel(variable=v).values.astype(np.float32)) for v in variables})


def write(template_ds: xr.Dataset, path: StrPath, blocks: Iterable[xr.Dataset]) -> None:
    """Write the store atomically, block by block along ``time`` (bounded memory)."""
    from hpcpipe.store import write_store_blocks

    write_store_blocks(template_ds, path, "time", blocks)


# ----------------------------------------------------------------------------- reading


def open_forecast(path: StrPath, name: str) -> xr.Dataset:
    """Open a forecast store lazily; ForecastError naming ``name`` and ``path`` if unreadable."""
    from hpcpipe.store import StoreError, open_store

    try:
        return open_store(path, f"forecast store {name!r}")
    except StoreError as exc:
        raise ForecastError(str(exc)) from None


def problems(ds: xr.Dataset, want: Expected) -> list[str]:
    """What differs between the store ``ds`` and ``want`` (an empty list: it fits)."""
    found: list[str] = []
    for dim in DIMS:
        if dim not in ds.dims:
            found.append(f"no dimension {dim!r} (dims {list(ds.dims)}; layout {list(DIMS)})")
    if found:
        return found
    missing = [v for v in want.variables if v not in ds.data_vars]
    if missing:
        found.append(f"variables {missing} missing (it has {sorted(map(str, ds.data_vars))})")
    for v in want.variables:
        if v in missing:
            continue
        if set(ds[v].dims) != set(DIMS):
            found.append(f"variable {v!r} has dims {ds[v].dims}, not {DIMS}")
        got = ds[v].attrs.get("units")
        if got is None:
            found.append(f"variable {v!r} has no 'units' attribute")
        elif want.units is not None and v in want.units and str(got) != str(want.units[v]):
            found.append(f"variable {v!r} is in {got!r}, the observations in {want.units[v]!r}")
    found += _timedelta_problems(ds, want)
    found += _grid_problems(ds, want)
    if want.init_times is not None:
        missing_t = _missing(ds.indexes["time"], want.init_times)
        if len(missing_t):
            found.append(
                f"initialisation times miss {len(missing_t)} of the {len(want.init_times)} "
                f"test samples' (first {_fmt(missing_t[0])}; the store has "
                f"{_span(ds.indexes['time'])})"
            )
    return found


def _timedelta_problems(ds: xr.Dataset, want: Expected) -> list[str]:
    td = ds[LEAD_DIM]
    if td.dtype.kind != "m":
        return [f"{LEAD_DIM} is {td.dtype}, not timedelta64"]
    if want.timedeltas is None:
        return []
    have = set(td.values.astype("timedelta64[ns]").tolist())
    lacking = [t for t in want.timedeltas.astype("timedelta64[ns]") if t.tolist() not in have]
    if lacking:
        return [
            f"{LEAD_DIM} lacks the leads {[str(pd.Timedelta(t)) for t in lacking]} "
            f"(it has {[str(pd.Timedelta(t)) for t in td.values]})"
        ]
    return []


def _grid_problems(ds: xr.Dataset, want: Expected) -> list[str]:
    found = []
    for dim, ref in (("latitude", want.lat), ("longitude", want.lon)):
        if ref is None:
            continue
        got = np.sort(np.asarray(ds[dim].values, dtype=np.float64))
        if got.shape != ref.shape or not np.allclose(got, ref, atol=GRID_ATOL, rtol=0):
            found.append(
                f"its {dim} ({got.size} values, {_range(got)}) is not the data's "
                f"({ref.size} values, {_range(ref)})"
            )
    return found


def check_forecast(ds: xr.Dataset, want: Expected, name: str, path: StrPath) -> None:
    """ForecastError naming ``name``, ``path`` and every difference from ``want``."""
    if found := problems(ds, want):
        raise ForecastError(
            f"forecast store {name!r} ({path}) does not fit the evaluation: " + "; ".join(found)
        )


def as_normalised(
    ds: xr.Dataset, test: xr.Dataset, norm: Normalisation, want: Expected
) -> xr.DataArray:
    """The store's forecasts of the test samples as normalised anomalies (sample, lead,
    variable, lat, lon), float64, the inverse of what predict wrote (in memory)."""
    assert want.init_times is not None and want.timedeltas is not None
    ds = ds.sortby(["latitude", "longitude"])  # a descending grid reads as the data's
    sel = ds[want.variables].sel(time=want.init_times, **{LEAD_DIM: want.timedeltas})
    x = xr.concat([sel[v].transpose(*DIMS) for v in want.variables], dim="variable")
    x = x.drop_vars([c for c in x.coords if c not in DIMS]).astype(np.float64).load()
    x = x.rename({"time": SAMPLE, LEAD_DIM: "lead", "latitude": "lat", "longitude": "lon"})
    x = x.transpose(SAMPLE, "lead", "variable", "lat", "lon")
    coords = {k: test[k] for k in (SAMPLE, "lead", "lat", "lon")}
    x = x.drop_vars(list(x.coords)).assign_coords(variable=list(want.variables), **coords)
    return to_normalised(x, norm.mean, norm.std, norm.at(test["valid_time"]))


def open_checked(path: StrPath, name: str, want: Expected) -> xr.Dataset:
    ds = open_forecast(path, name)
    check_forecast(ds, want, name, path)
    return ds


# ----------------------------------------------------------------------------- plan time


def plan_problems(external: Mapping[str, str], config: dict) -> list[str]:
    """Before any job: the ``evaluate.external`` stores against what the config alone fixes
    (layout, variables, units and grid of the built-in data, timedeltas of a daily axis)."""
    out = []
    want = _expected_from_config(config)
    for name, path in external.items():
        try:
            ds = open_forecast(path, name)
        except ForecastError as exc:
            out.append(f"evaluate.external.{name}: {exc}")
            continue
        if found := problems(ds, want):
            out.append(
                f"evaluate.external.{name} ({path}) does not fit the evaluation: "
                + "; ".join(found)
            )
    return out


def _expected_from_config(config: dict) -> Expected:
    variables = list(config["dataset"]["variables"])
    if config["dataset"]["source"] != "builtin":
        return Expected(variables)  # grid, units and step are the file's: checked by the step
    from hpcpipe.generate.dataset import latitudes, longitudes
    from hpcpipe.generate.fields import FIELDS

    b, c = config["dataset"]["builtin"], int(config["preprocess"]["coarsen"])
    return Expected(
        variables,
        units={v: FIELDS[v].units for v in variables if v in FIELDS},
        lat=_coarsened(latitudes(int(b["n_lat"])), c),
        lon=_coarsened(longitudes(int(b["n_lon"])), c),
        timedeltas=lead_timedeltas(config["features"]["leads"], pd.Timedelta(days=1)),
    )


def _coarsened(x: np.ndarray, c: int) -> np.ndarray:
    # preprocess's block mean with boundary="trim"
    n = x.size // c * c
    return x[:n].reshape(-1, c).mean(axis=1)


# ----------------------------------------------------------------------------- helpers


def _missing(index: Any, wanted: Any) -> list[Any]:
    try:
        pos = index.get_indexer(wanted)
    except (TypeError, ValueError):  # another kind of time (cftime against datetime64)
        return list(wanted)
    return [t for t, p in zip(wanted, pos, strict=True) if p < 0]


def _fmt(t: Any) -> str:
    return str(pd.Timestamp(t)) if isinstance(t, np.datetime64) else str(t)


def _span(index: Any) -> str:
    return f"{len(index)} from {_fmt(index[0])} to {_fmt(index[-1])}" if len(index) else "none"


def _range(x: np.ndarray) -> str:
    return f"{x.min():g}..{x.max():g}" if x.size else "empty"


def provenance_attrs(
    identity: Mapping[str, Any], params: Mapping[str, Any], inputs: Iterable[StrPath]
) -> dict[str, Any]:
    """The store's own record of what made it (the manifest has the full one)."""
    from hpcpipe import __version__
    from hpcpipe.provenance import recorded_checksum

    return {
        "title": f"hpcpipe forecasts of {identity.get('model')} seed {identity.get('seed')}",
        "source": "hpcpipe predict",
        "hpcpipe_version": __version__,
        **{k: v for k, v in identity.items() if v is not None},
        "params": json.dumps(dict(params), sort_keys=True),
        "inputs": {str(p): recorded_checksum(p) for p in inputs},
        # no time stamp: the store's bytes are the same on every run (its manifest has the times)
        "history": "hpcpipe predict",
    }


def path_identity(path: StrPath) -> tuple[str, str]:
    """(model, run) of results/forecasts/{model}/{seed}{point}.zarr."""
    p = Path(path)
    return p.parent.name, p.name.removesuffix(".zarr")
