"""Features: lagged input stacks, derived fields and multi-lead targets per split.

Samples are materialised (sample, channel, lat, lon) and chunked along ``sample`` only, so
training reads a random mini-batch as one contiguous slice. A split's samples are the
initial times t inside the split whose lags t-l and targets t+L exist, with targets inside
the split (no leakage across periods).
"""

from __future__ import annotations

import logging
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from hpcpipe.contracts import check_preprocessed
from hpcpipe.grid import gradient_x
from hpcpipe.grid import kind as grid_kind
from hpcpipe.splits import period_bounds, sample_range

log = logging.getLogger("hpcpipe.features")
SPLITS = ("train", "val", "test")


def _gradients(x: np.ndarray, periodic: bool = True) -> np.ndarray:
    """Centred differences per grid cell: d/dx periodic in longitude on a global grid and
    one-sided at the edges of a regional one, d/dy one-sided at the poles."""
    ddx = gradient_x(x, periodic)
    ddy = np.gradient(x, axis=-2) if x.shape[-2] > 1 else np.zeros_like(x)
    return np.concatenate([ddx, ddy], axis=1).astype(np.float32)


def channel_names(variables: list[str], lags: list[int], derived: list[str]) -> list[str]:
    names = [f"{v}_lag{lag}" for lag in lags for v in variables]
    if "gradient" in derived:
        names += [f"{v}_ddx" for v in variables] + [f"{v}_ddy" for v in variables]
    return names


def _stacks(
    a: da.Array, s0: int, s1: int, params: dict[str, Any], periodic: bool = True
) -> tuple[da.Array, da.Array]:
    """Inputs (sample, channel, lat, lon) and targets (sample, lead, variable, lat, lon) of the
    initial times [s0, s1) of the anomaly ``a`` (time, variable, lat, lon); NaN -> 0."""
    parts = [a[s0 - lag : s1 - lag] for lag in params["lags"]]
    if "gradient" in params["derived"]:
        parts.append(
            a[s0:s1].map_blocks(
                _gradients,
                periodic,
                chunks=(a[s0:s1].chunks[0], (2 * a.shape[1],), *a.chunks[2:]),
                dtype=np.float32,
            )
        )
    inputs = da.concatenate(parts, axis=1)
    inputs = da.where(da.isnan(inputs), np.float32(0), inputs)
    targets = da.stack([a[s0 + lead : s1 + lead] for lead in params["leads"]], axis=1)
    targets = da.where(da.isnan(targets), np.float32(0), targets)
    return inputs, targets


def split_features(pre: xr.Dataset, split: str, params: dict[str, Any]) -> xr.Dataset:
    """The (lazy) features dataset of one split."""
    check_preprocessed(pre)
    lags, leads, derived = params["lags"], params["leads"], params["derived"]
    bounds = period_bounds(pre["split"].values, split)
    if bounds is None:
        raise ValueError(f"split {split!r} has no time steps in the preprocessed store")
    s0, s1 = sample_range(bounds, lags, leads)
    if s1 <= s0:
        raise ValueError(f"split {split!r}: too few time steps for lags {lags} and leads {leads}")
    a = pre["anomaly"].data  # (time, variable, lat, lon)
    if not isinstance(a, da.Array):
        a = da.from_array(a, chunks=(-1, -1, -1, -1))
    a = a.rechunk({1: -1, 2: -1, 3: -1})  # whole fields per chunk for the gradient
    periodic = grid_kind(pre) == "global"
    inputs, targets = _stacks(a, s0, s1, params, periodic)
    mask = np.isfinite(pre["anomaly"].isel(time=s0).values)

    time = pre["time"].values
    variables = [str(v) for v in pre["variable"].values]
    n = s1 - s0
    ds = xr.Dataset(
        {
            "inputs": (("sample", "channel", "lat", "lon"), inputs),
            "targets": (("sample", "lead", "variable", "lat", "lon"), targets),
            "mask": (("variable", "lat", "lon"), mask),
        },
        coords={
            "sample": np.arange(n),
            "time": ("sample", time[s0:s1]),
            "valid_time": (
                ("sample", "lead"),
                np.stack([time[s0 + lead : s1 + lead] for lead in leads], axis=1),
            ),
            "lead": np.asarray(leads, dtype=np.int64),
            "channel": channel_names(variables, lags, derived),
            "variable": variables,
            "lat": pre["lat"].values,
            "lon": pre["lon"].values,
        },
        attrs={
            "split": split,
            "lags": list(lags),
            "leads": list(leads),
            "grid": "global" if periodic else "regional",
            **{k: pre.attrs[k] for k in ("time_frequency", "time_resolution") if k in pre.attrs},
        },
    )
    per_sample = (
        4 * (inputs.shape[1] + targets.shape[1] * targets.shape[2]) * a.shape[2] * a.shape[3]
    )
    log.info(
        "%s: %d samples, %d channels, %.1f MB", split, n, inputs.shape[1], n * per_sample / 1e6
    )
    return ds
