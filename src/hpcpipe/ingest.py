"""Ingest: read any CF NetCDF/Zarr dataset into the canonical raw store, or fail clearly.

Canonical form (docs/data-contracts.md): dims (time, lat, lon), lat ascending, lon in
[0, 360) ascending, time strictly increasing with a regular step, float32 variables
(the raw store's contract, which :func:`hpcpipe.contracts.check_raw` checks).
Every check names the file and the variable or dimension at fault.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import xarray as xr

from hpcpipe.contracts import RAW_DIMS, DatasetError, check_raw
from hpcpipe.grid import normalise_lon
from hpcpipe.ingest_checks import (
    check_time_decoded,
    first_steps_problems,
    refusing_inf,
    select_levels,
)
from hpcpipe.splits import sample_count, split_indices
from hpcpipe.timeaxis import climatology_for, period_problems

log = logging.getLogger("hpcpipe.ingest")
__all__ = ["DatasetError", "check_config_against_file", "check_serves", "ingest"]


def open_source(
    path: str | os.PathLike[str], group: str | None = None, time_name: str = "time"
) -> xr.Dataset:
    """Open a NetCDF file or Zarr store (or one group of it) lazily, decoding any CF calendar."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or directory (ingest.path)")
    if p.is_file() and p.stat().st_size == 0:
        raise DatasetError(f"{p}: the file is empty (0 bytes); an interrupted download or copy?")
    if p.is_file() and p.suffix != ".zarr" and not _has_netcdf_signature(p):
        raise DatasetError(
            f"{p}: not a NetCDF file (it starts with neither the NetCDF nor the HDF5 "
            "signature); ingest.path takes NetCDF files (.nc) and Zarr stores (.zarr)"
        )
    coder = xr.coders.CFDatetimeCoder(use_cftime=None)  # cftime only where numpy cannot
    try:
        return _open(p, group, coder)
    except Exception as exc:
        where = f" (ingest.group {group!r})" if group else ""
        if group and _groups(p) is not None and group not in _groups(p):
            raise DatasetError(
                f"{p}: has no group {group!r} (ingest.group); its groups: {_groups(p)}"
            ) from None
        hint = (
            f"check the units and calendar attributes of its time variable {time_name!r}"
            if _opens_without_times(p, group)
            else "a truncated or corrupt file?"
        )
        raise DatasetError(
            f"{p}{where}: cannot be read as NetCDF or Zarr ({type(exc).__name__}: "
            f"{_short(exc)}); {hint}"
        ) from exc


def _open(p: Path, group: str | None, decode_times: Any) -> xr.Dataset:
    """A Zarr store or a NetCDF file at ``p``, lazily."""
    if p.is_dir() or p.suffix == ".zarr":
        return xr.open_zarr(p, group=group, chunks={}, decode_times=decode_times, consolidated=None)
    return xr.open_dataset(p, group=group, chunks={}, decode_times=decode_times)


def _opens_without_times(p: Path, group: str | None) -> bool:
    """Whether ``p`` opens when times are left undecoded: then decoding them failed."""
    try:
        _open(p, group, decode_times=False).close()
    except Exception:
        return False
    return True


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def _groups(p: Path) -> list[str] | None:
    """The groups at the top of a NetCDF-4 file or Zarr store (None when unreadable)."""
    try:
        if p.is_dir() or p.suffix == ".zarr":
            import zarr

            return sorted(zarr.open_group(str(p), mode="r").group_keys())
        import netCDF4

        with netCDF4.Dataset(p) as nc:
            return sorted(nc.groups)
    except Exception:
        return None


# NetCDF classic and 64-bit offset files start with b"CDF"; NetCDF-4 files are HDF5.
_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05", b"\x89HDF\r\n\x1a\n")


def _has_netcdf_signature(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return head.startswith(_SIGNATURES)


def as_paths(path: str | os.PathLike[str] | list[str]) -> list[str]:
    """ingest.path as a list: one file or store, or several in time order (e.g. yearly files)."""
    return [str(path)] if isinstance(path, str | os.PathLike) else [str(p) for p in path]


def open_canonical(
    path: str | os.PathLike[str] | list[str],
    variables: list[str],
    rename: dict[str, str],
    select: dict[str, Any] | None = None,
    group: str | None = None,
) -> tuple[xr.Dataset, str]:
    """Open, canonicalise and (for several files) join along time; return it and its name.

    Each file is checked on its own first, so that an error names the file at fault.
    """
    paths = as_paths(path)
    tname = rename.get("time", "time")
    parts = [
        canonicalise(open_source(p, group, tname), variables, rename, p, select or {})
        for p in paths
    ]
    if len(parts) == 1:
        return parts[0], paths[0]
    return _join(parts, paths), f"{paths[0]} (and {len(paths) - 1} more files)"


def calendar(ds: xr.Dataset) -> str:
    """The CF calendar of the time axis; numpy datetimes are the standard calendar."""
    times = ds.indexes["time"]
    return times.calendar if isinstance(times, xr.CFTimeIndex) else "standard"


def _join(parts: list[xr.Dataset], paths: list[str]) -> xr.Dataset:
    first = parts[0]
    for part, p in zip(parts[1:], paths[1:], strict=True):
        if calendar(part) != calendar(first):
            raise DatasetError(
                f"{p}: time is in the {calendar(part)!r} calendar but {paths[0]} is in the "
                f"{calendar(first)!r} calendar; the files of ingest.path must share one calendar"
            )
        for dim in ("lat", "lon"):
            if part.sizes[dim] != first.sizes[dim] or not np.allclose(part[dim], first[dim]):
                raise DatasetError(
                    f"{p}: its {dim} grid differs from that of {paths[0]}; the files of "
                    "ingest.path must share one grid"
                )
    joined = xr.concat(parts, dim="time", coords="minimal", compat="override", join="override")
    joined.attrs = {"source": ", ".join(paths)}
    return _normalise_coords(joined, f"{paths[0]} (and {len(paths) - 1} more files)")


def canonicalise(
    ds: xr.Dataset,
    variables: list[str],
    rename: dict[str, str],
    name: str,
    select: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Rename, select, reorder and normalise ``ds`` to the canonical form."""
    if not ds.data_vars:
        groups = _groups(Path(name))
        if groups:
            raise DatasetError(
                f"{name}: its variables are in NetCDF4/Zarr groups {groups}; "
                "name the group with ingest.group"
            )
        raise DatasetError(f"{name}: contains no data variables (an empty or truncated file?)")
    ds = select_levels(ds, select or {}, name)
    inverse = {src: canon for canon, src in rename.items()}
    missing_src = [src for src in inverse if src not in ds.variables and src not in ds.dims]
    if missing_src:
        raise DatasetError(
            f"{name}: ingest.rename refers to {missing_src}, which the file does not have "
            f"(it has variables {sorted(map(str, ds.data_vars))} and dims {sorted(map(str, ds.dims))})"
        )
    ds = ds.rename({k: v for k, v in inverse.items() if k != v})
    for dim in RAW_DIMS:
        if dim not in ds.dims:
            raise DatasetError(
                f"{name}: no dimension {dim!r} (dims are {sorted(map(str, ds.dims))}); "
                f"map it with ingest.rename.{dim}"
            )
    absent = [v for v in variables if v not in ds.data_vars]
    if absent:
        raise DatasetError(
            f"{name}: variable(s) {absent} not found (it has {sorted(map(str, ds.data_vars))}); "
            "fix dataset.variables or map names with ingest.rename"
        )
    check_time_decoded(ds, rename.get("time", "time"), name)
    res = xr.Dataset({v: _canonical_variable(ds[v], v, name) for v in variables})
    res = _normalise_coords(res, name)
    for v in variables:
        res[v].attrs = {k: ds[v].attrs[k] for k in ("units", "long_name") if k in ds[v].attrs}
    res.attrs = {"source": str(name), "grid": res.attrs["grid"]}
    return res


def _canonical_variable(da: xr.DataArray, v: str, name: str) -> xr.DataArray:
    """Variable ``v`` as float32 (time, lat, lon); a size-1 extra dimension is dropped."""
    for dim in da.dims:
        if dim not in RAW_DIMS:
            if da.sizes[dim] != 1:
                values = da[dim].values.tolist() if dim in da.coords else "no coordinate"
                raise DatasetError(
                    f"{name}: variable {v!r} has extra dimension {dim!r} of size "
                    f"{da.sizes[dim]}; pick one with ingest.select: {{{dim}: <value>}} "
                    f"(its values: {str(values)[:200]})"
                )
            da = da.isel({dim: 0}, drop=True)
    lacking = [d for d in RAW_DIMS if d not in da.dims]
    if lacking:
        raise DatasetError(
            f"{name}: variable {v!r} lacks dimension(s) {lacking} (has {list(da.dims)})"
        )
    if da.dtype.kind not in "fiu":
        raise DatasetError(f"{name}: variable {v!r} has non-numeric dtype {da.dtype}")
    return da.transpose(*RAW_DIMS).astype("float32").reset_coords(drop=True)


def _normalise_coords(ds: xr.Dataset, name: str) -> xr.Dataset:
    lat = ds["lat"].values
    if lat.ndim != 1 or np.any(np.abs(lat) > 90):
        raise DatasetError(f"{name}: latitude must be 1-D degrees in [-90, 90]")
    if lat.size > 1 and not (np.all(np.diff(lat) > 0) or np.all(np.diff(lat) < 0)):
        raise DatasetError(f"{name}: latitude is not monotonic")
    if lat.size > 1 and lat[0] > lat[-1]:
        ds = ds.isel(lat=slice(None, None, -1))  # descending latitude (ERA5 style) -> ascending
    ds = normalise_lon(ds, name)
    times = ds.indexes["time"]
    if times.has_duplicates:
        dup = times[times.duplicated()][0]
        raise DatasetError(f"{name}: duplicated time {dup}; each time step must appear once")
    if not times.is_monotonic_increasing:
        log.warning("%s: time is not sorted; sorting it", name)
        ds = ds.sortby("time")
    return ds


def check_serves(
    ds: xr.Dataset,
    variables: list[str],
    split: dict,
    lags: list[int],
    leads: list[int],
    name: str,
    axis: Any = None,
) -> dict[str, int]:
    """Check that ``ds`` can feed every split with the lags and leads; return sample counts.
    ``axis``: its time axis where the caller has checked it already (contracts.check_raw)."""
    axis = axis or check_raw(ds, variables, name)
    bounds = split_indices(ds, split, name)
    problems = period_problems(ds.indexes["time"], axis, split, name)
    if problems:
        raise DatasetError("; ".join(problems))
    counts = {}
    for part, (i0, i1) in bounds.items():
        counts[part] = sample_count((i0, i1), lags, leads)
        if counts[part] < 1:
            raise DatasetError(
                f"{name}: split {part!r} (preprocess.split.{part}) has {i1 - i0} time steps, "
                f"too few for features.lags {lags} and features.leads {leads} (need more than "
                f"{max(leads)} steps after the first usable one)"
            )
    problems = first_steps_problems(ds, variables, name)
    if problems:
        raise DatasetError("; ".join(problems))
    return counts


def ingest(path: str | list[str], params: dict[str, Any]) -> xr.Dataset:
    """Open, canonicalise and check an external dataset (lazy; the CLI writes it).

    ``path`` is one file or store, or several in time order (ingest.path as a list). The
    split, lags and leads are checked when given (by hand); the workflow checks them before
    it starts and leaves them out of the rule's params, so that changing them does not ingest
    the data again. Infinite values fail the write, naming the variable and the time.
    """
    ds, name = open_canonical(
        path, params["variables"], params.get("rename", {}), params.get("select"),
        params.get("group"),
    )  # fmt: skip
    axis = check_raw(ds, params["variables"], name)
    ds.attrs.update(axis.attrs())
    log.info("%s: %s steps, a %s grid", name, axis.frequency, ds.attrs["grid"])
    if "split" in params:
        counts = check_serves(
            ds, params["variables"], params["split"], params["lags"], params["leads"], name, axis
        )
        log.info("%s: %s, samples per split %s", name, dict(ds.sizes), counts)
    return refusing_inf(ds, name)


class FileCheck(NamedTuple):
    counts: dict[str, int]  # samples per split
    climatology: str  # preprocess.climatology, ``auto`` resolved for the file's frequency


def check_config_against_file(config: dict) -> FileCheck:
    """Before any job runs: can the configured file(s) serve the split, lags, leads,
    climatology and models?

    Reads metadata and the first time steps only, so it is cheap even for large stores.
    """
    variables = config["dataset"]["variables"]
    ing = config["ingest"]
    ds, name = open_canonical(ing["path"], variables, ing["rename"], ing["select"], ing["group"])
    f, pre = config["features"], config["preprocess"]
    axis = check_raw(ds, variables, name)
    counts = check_serves(ds, variables, pre["split"], f["lags"], f["leads"], name, axis)
    kind = climatology_for(pre["climatology"], axis.resolution, f"{name} ({axis.frequency} steps)")
    if "unet" in config["train"]["models"]:
        from hpcpipe.config import unet_problems
        from hpcpipe.sweep import with_each_value

        for c in with_each_value(config, "models.unet.depth"):  # and every swept depth
            if problems := unet_problems(c, ds.sizes["lat"], ds.sizes["lon"], name):
                raise DatasetError(problems[0])
    return FileCheck(counts, kind)
