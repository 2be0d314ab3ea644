"""Thresholds of extremes: the training-period quantile of the anomaly at every grid point.

A step of its own, after preprocess, so that changing ``evaluate.extreme_quantile`` reruns
this and the evaluation only, never preprocessing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from hpcpipe import chunking, splits
from hpcpipe.contracts import check_preprocessed


def _quantile_block(x: np.ndarray, q: float) -> np.ndarray:
    f = np.nanquantile if np.isnan(x).any() else np.quantile
    with np.errstate(all="ignore"):
        return f(x, q, axis=0).astype(np.float32)


def thresholds(pre: xr.Dataset, params: dict[str, Any]) -> xr.Dataset:
    """Per-grid-point quantile of the training-period normalised anomaly (extreme events)."""
    check_preprocessed(pre)
    q = params["extreme_quantile"]
    bounds = splits.period_bounds(pre["split"].values, "train")
    if bounds is None:
        raise ValueError("the preprocessed store has no training period")
    train = pre["anomaly"].isel(time=slice(*bounds)).data
    nt, nv, _, nx = train.shape
    # The quantile needs the whole time series of a point: chunk by latitude rows instead.
    rows = chunking.threshold_rows(nt, nv, nx)
    qd = train.rechunk({0: -1, 1: -1, 2: rows, 3: -1}).map_blocks(
        _quantile_block, q, drop_axis=0, dtype=np.float32
    )
    coords = {k: pre.coords[k] for k in ("variable", "lat", "lon")}
    out = xr.Dataset({"quantile": xr.DataArray(qd, dims=("variable", "lat", "lon"), coords=coords)})
    out["quantile"].attrs = {"long_name": f"{q} quantile of training-period normalised anomaly"}
    out.attrs["extreme_quantile"] = q
    return out
