"""Data contracts between steps: what each store must hold (docs/data-contracts.md).

The steps check what they read with these functions, and the tests check what the steps
write with the same ones, in the spirit of ``xarray.testing``. The checks read metadata and
coordinates only, never the data, so they cost nothing next to the step. Each raises
:class:`DatasetError` naming the store (``where``) and what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the config check imports this module: keep xarray's second out of it
    import xarray as xr

RAW_DIMS = ("time", "lat", "lon")
PREPROCESSED = {
    "anomaly": ("time", "variable", "lat", "lon"),
    "climatology": ("period", "variable", "lat", "lon"),
    "mean": ("variable",),
    "std": ("variable",),
    "split": ("time",),
}
THRESHOLDS = {"quantile": ("variable", "lat", "lon")}
FEATURES = {
    "inputs": ("sample", "channel", "lat", "lon"),
    "targets": ("sample", "lead", "variable", "lat", "lon"),
    "mask": ("variable", "lat", "lon"),
}


class DatasetError(ValueError):
    """The dataset cannot serve the pipeline; the message names the file and what is wrong."""


def _check_arrays(ds: xr.Dataset, dims: Mapping[str, tuple[str, ...]], where: str) -> None:
    """Every array of ``dims`` is in ``ds`` (as a variable or coordinate) with those dims."""
    for name, want in dims.items():
        if name not in ds.variables:
            raise DatasetError(f"{where} lack {name!r} (docs/data-contracts.md)")
        if ds[name].dims != want:
            raise DatasetError(
                f"{where}: {name!r} has dims {ds[name].dims}, not {want} (docs/data-contracts.md)"
            )


def check_raw(
    ds: xr.Dataset, variables: Sequence[str] | None = None, where: str = "raw data"
) -> Any:
    """The raw store (generate | ingest): float32 ``variables`` (default: all) on (time, lat,
    lon), lat and lon ascending, time strictly increasing with a regular step.

    Returns the time axis (:class:`hpcpipe.timeaxis.TimeAxis`).
    """
    from hpcpipe.grid import MIN_LON
    from hpcpipe.timeaxis import infer

    names = list(ds.data_vars) if variables is None else list(variables)
    _check_arrays(ds, dict.fromkeys(names, RAW_DIMS), where)
    for name in names:
        if ds[name].dtype != np.float32:
            raise DatasetError(f"{where}: {name!r} is {ds[name].dtype}, not float32")
    for dim in ("lat", "lon"):
        if np.any(np.diff(ds[dim].values) <= 0):
            raise DatasetError(f"{where}: {dim} is not strictly ascending")
    # Ingest puts global grids in [0, 360); a regional box stays contiguous in its own frame.
    if ds.sizes["lon"] and float(ds["lon"].values[0]) < MIN_LON:
        raise DatasetError(f"{where}: longitudes must start at {MIN_LON} or more (degrees east)")
    times = ds.indexes["time"]
    if not (times.is_monotonic_increasing and times.is_unique):
        raise DatasetError(f"{where}: time is not strictly increasing")
    return infer(times, where)


def check_preprocessed(ds: xr.Dataset, where: str = "preprocessed data") -> None:
    """The preprocessed store: anomaly, climatology, mean, std and the time steps' split."""
    _check_arrays(ds, PREPROCESSED, where)


def check_thresholds(ds: xr.Dataset, where: str = "thresholds") -> None:
    """The thresholds store: the quantile per grid point, and which quantile it is."""
    _check_arrays(ds, THRESHOLDS, where)
    if "extreme_quantile" not in ds.attrs:
        raise DatasetError(f"{where} lack the attribute 'extreme_quantile'")


def check_features_store(ds: xr.Dataset, where: str | os.PathLike[str]) -> None:
    """One feature store (results/features/{split}.zarr): inputs, targets and mask."""
    _check_arrays(ds, FEATURES, f"features in {where}")


def check_features(train: xr.Dataset, val: xr.Dataset, where: str | os.PathLike[str]) -> None:
    """The training and validation feature stores of ``where`` can train one model together."""
    from hpcpipe.store import decode_str

    check_features_store(train, where)
    check_features_store(val, where)
    for coord in ("channel", "lead", "variable"):
        if decode_str(train[coord].values) != decode_str(val[coord].values):
            raise ValueError(f"{where}: train.zarr and val.zarr differ in {coord!r}")
    if train["inputs"].shape[-2:] != val["inputs"].shape[-2:]:
        raise ValueError(f"{where}: train.zarr and val.zarr have different grids")
