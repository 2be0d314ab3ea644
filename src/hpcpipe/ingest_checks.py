"""Checks and selections of ingest that name the file and key at fault.

``ingest.select`` (a level or a member of an extra dimension), times that did not decode to
dates, and infinite values (found while the data are read, not left to training).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from hpcpipe.contracts import DatasetError


def select_levels(ds: xr.Dataset, select: dict[str, Any], name: str) -> xr.Dataset:
    """``ds`` at ``select`` ({dim: value}, ingest.select): the value of a coordinate, or the
    index along a dimension without one."""
    for dim, value in select.items():
        if dim not in ds.dims:
            raise DatasetError(
                f"{name}: ingest.select.{dim}: the file has no dimension {dim!r} "
                f"(dims are {sorted(map(str, ds.dims))})"
            )
        if dim not in ds.indexes:
            if not isinstance(value, int) or not 0 <= value < ds.sizes[dim]:
                raise DatasetError(
                    f"{name}: ingest.select.{dim}: {value!r} is not an index of {dim!r}, "
                    f"which has no coordinate (0..{ds.sizes[dim] - 1})"
                )
            ds = ds.isel({dim: value}, drop=True)
            continue
        values = ds.indexes[dim]
        if value not in values:
            raise DatasetError(
                f"{name}: ingest.select.{dim}: {value!r} is not one of its values "
                f"{str(values.tolist())[:200]}"
            )
        ds = ds.sel({dim: value}, drop=True)
    return ds


def check_time_decoded(ds: xr.Dataset, time_name: str, name: str) -> None:
    """The time coordinate holds dates (numpy or cftime), not plain numbers."""
    if "time" not in ds.indexes:
        raise DatasetError(
            f"{name}: dimension 'time' has no coordinate variable {time_name!r}; "
            "the file needs CF times (units like 'days since 2000-01-01')"
        )
    times = ds.indexes["time"]
    if isinstance(times, xr.CFTimeIndex) or np.issubdtype(times.dtype, np.datetime64):
        return
    units = ds["time"].attrs.get("units") or ds["time"].encoding.get("units")
    said = f"units {units!r}" if units else "no units attribute"
    raise DatasetError(
        f"{name}: time variable {time_name!r} holds {times.dtype} values, not dates "
        f"({said}); give it CF units like 'days since 2000-01-01' and a calendar"
    )


def _refuse_inf(block: np.ndarray, v: str, name: str, times: np.ndarray, block_info: Any = None):
    bad = np.isinf(block)
    if bad.any():
        t0 = block_info[0]["array-location"][0][0] if block_info else 0
        first = t0 + int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])
        raise DatasetError(
            f"{name}: variable {v!r} holds infinite values (first at time {times[first]}); "
            "mask them as NaN (missing) or fix the file"
        )
    return block


def refusing_inf(ds: xr.Dataset, name: str) -> xr.Dataset:
    """``ds`` whose data variables raise a named error when read with an infinite value."""
    times = np.asarray([str(t) for t in ds.indexes["time"]])
    out = ds.copy()
    for v in ds.data_vars:
        data = ds[v].data
        if hasattr(data, "map_blocks"):
            out[v] = ds[v].copy(data=data.map_blocks(_refuse_inf, v, name, times, dtype=data.dtype))
        else:
            _refuse_inf(np.asarray(data), v, name, times)
    return out


def first_steps_problems(ds: xr.Dataset, variables: list[str], name: str) -> list[str]:
    """All-NaN or infinite values in the first time steps (read cheaply before any job)."""
    problems = []
    for v in variables:
        first = ds[v].isel(time=slice(0, min(ds.sizes["time"], 8))).values
        if not np.isfinite(first).any():
            problems.append(
                f"{name}: variable {v!r} is all NaN in its first time steps (dataset.variables)"
            )
        elif np.isinf(first).any():
            problems.append(
                f"{name}: variable {v!r} holds infinite values in its first time steps; "
                "mask them as NaN (missing) or fix the file"
            )
    return problems


# Per time step and variable, recorded in the raw store by ingest (coordinates along time,
# computed in the same pass as the write): how many points are finite, and whether the field
# repeats the previous step exactly. The workflow reads them before any job to refuse a
# training period whose field is all NaN or constant (preprocess could not normalise it, and
# Snakemake would have removed the previous results before the preprocess job failed).
FINITE, REPEATED = "steps_finite_{}", "steps_repeated_{}"


def with_step_summary(ds: xr.Dataset, variables: list[str]) -> xr.Dataset:
    """``ds`` with the per-step summary coordinates of every variable (lazy)."""
    coords = {}
    for v in variables:
        x = ds[v]
        prev = x.shift(time=1)
        same = ((x == prev) | (x.isnull() & prev.isnull())).all(("lat", "lon"))
        coords[FINITE.format(v)] = x.notnull().sum(("lat", "lon")).astype("int32").variable
        coords[REPEATED.format(v)] = same.variable
    return ds.assign_coords(coords)


def training_period_problems(
    raw_path: str, params: str, split: dict, variables: list[str]
) -> list[str]:
    """A field all NaN or constant over the training period of an existing raw store that is
    current (ingested with ``params``, the rule's params); nothing to say otherwise."""
    import os

    if not os.path.isdir(raw_path):
        return []
    try:
        raw = xr.open_zarr(raw_path, consolidated=None, chunks=None)
    except Exception:  # a damaged store is ingested again
        return []
    if raw.attrs.get("params") != params:
        return []  # ingest runs again first, and the check_raw rule after it
    return raw_problems(raw, split, variables, raw_path)


def raw_problems(raw: xr.Dataset, split: dict, variables: list[str], path: str) -> list[str]:
    """A field of the raw store ``raw`` (at ``path``) all NaN or constant over the training
    period, from the per-step summary that ingest recorded."""
    from hpcpipe.splits import split_indices

    t0, t1 = split_indices(raw, {"train": split["train"]}, path)["train"]
    period = f"preprocess.split.train {split['train'][0]}..{split['train'][1]}"
    source = raw.attrs.get("source", path)
    problems = []
    for v in variables:
        if FINITE.format(v) not in raw.coords:
            continue
        if not raw[FINITE.format(v)].values[t0:t1].any():
            problems.append(f"{source}: variable {v!r} is all NaN over the training period "
                            f"({period})")  # fmt: skip
        elif t1 - t0 > 1 and raw[REPEATED.format(v)].values[t0 + 1 : t1].all():
            problems.append(f"{source}: variable {v!r} is constant over the training period "
                            f"({period}); preprocess could not normalise it")  # fmt: skip
    return problems
