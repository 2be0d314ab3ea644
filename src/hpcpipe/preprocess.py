"""Preprocess: coarsen, climatology, anomalies, normalisation, time split (Dask + xarray).

All statistics (climatology, mean/std, extreme quantiles) come from the training period
only, so nothing from val/test leaks into the model. Each pass over the data is one small
Dask graph with one task per storage chunk: climatology sums, anomaly statistics, write.
Each task reads its own block and keeps only small sums (or writes the block), so data
larger than the workers' memory streams through them without spilling (:mod:`hpcpipe.blocks`).
"""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from hpcpipe import chunking, grid, splits
from hpcpipe.blocks import Blocks, as_dask, fields_of, sum_over_steps
from hpcpipe.contracts import check_raw
from hpcpipe.periods import hours_of_day, period_index
from hpcpipe.timeaxis import climatology_for

log = logging.getLogger("hpcpipe.preprocess")


def _period_sums(fields: tuple[np.ndarray, ...], idx: np.ndarray, n: int) -> np.ndarray:
    """Sums and counts of finite values per period for one time block of the variables
    ``fields`` (each (time, ...)): (2, n, n_vars, ...).

    Period by period and variable by variable (sums over time alone: the same as of the
    stacked block), into buffers made once per block: Dask's workers make glibc map every
    allocation over 128 KB afresh (MALLOC_TRIM_THRESHOLD_), and first touches then cost more
    than the sums. Accumulated in float64, the same values as ``np.where(finite, rows, 0)``.
    """
    grid = fields[0].shape[1:]
    out = np.zeros((2, n, len(fields), *grid), dtype=np.float64)
    periods, counts = np.unique(idx, return_counts=True)
    if not periods.size:
        return out
    rows = np.empty((counts.max(), *grid), dtype=fields[0].dtype)
    finite, bad = np.empty(rows.shape, dtype=bool), np.empty(rows.shape, dtype=bool)
    for p, k in zip(periods, counts, strict=True):
        r, f, chosen = rows[:k], finite[:k], idx == p
        for v, field in enumerate(fields):
            np.compress(chosen, field, axis=0, out=r)
            np.isfinite(r, out=f)
            np.copyto(r, 0, where=np.logical_not(f, out=bad[:k]))
            out[0, p, v] = r.sum(axis=0, dtype=np.float64)
            out[1, p, v] = f.sum(axis=0)
    return out


def _circular_smooth(a: np.ndarray, window: int) -> np.ndarray:
    """Centred moving sum over axis 0, wrapping around the year."""
    if window <= 1:
        return a
    half = window // 2
    padded = np.concatenate([a[-half:], a, a[: window - half - 1]], axis=0)
    c = np.cumsum(padded, axis=0)
    c = np.concatenate([np.zeros_like(c[:1]), c], axis=0)
    return c[window:] - c[:-window]


def _smooth_days(a: np.ndarray, window: int, per_day: int) -> np.ndarray:
    """The circular moving sum over days of periods ``(day, slot)`` flattened day-major."""
    days = a.reshape(a.shape[0] // per_day, per_day, *a.shape[1:])
    return _circular_smooth(days, window).reshape(a.shape)


def climatology(
    x: xr.DataArray,
    kind: str,
    window: int,
    hours: list[int] | None = None,
    steps: slice = slice(None),
    blocks: Blocks | None = None,
) -> xr.DataArray:
    """Mean per period of ``x`` (time, variable, ...) over its time ``steps`` (all by
    default), smoothed circularly over the days of the year for ``dayofyear`` and
    ``hour_dayofyear`` (hour by hour). ``blocks``: the variables of ``x`` apart, where ``x``
    stacks them (read apart, a block is never stacked)."""
    idx, n = period_index(x["time"], kind, hours)
    per_day = len(hours or ()) if kind == "hour_dayofyear" else 1
    blocks = blocks or Blocks(fields_of(x))
    shape = (2, n, x.shape[1], *x.shape[2:])
    total = sum_over_steps(_period_sums, blocks, idx, steps, shape, n=n)
    sums, counts = total[0], total[1]
    if kind in ("dayofyear", "hour_dayofyear"):
        sums, counts = _smooth_days(sums, window, per_day), _smooth_days(counts, window, per_day)
    with np.errstate(invalid="ignore", divide="ignore"):
        clim = sums / counts
    # A period with no data at all (e.g. 29 Feb absent from the training years) takes its
    # neighbour's value (the same hour of the day before); points masked everywhere stay NaN.
    seen = (counts > 0).reshape(n, -1).any(axis=1)
    if not seen.any():
        raise ValueError("no finite value in the training period")
    for p in range(n):
        if not seen[p]:
            q = p
            while not seen[q]:
                q = (q - per_day) % n
            clim[p] = clim[q]
    coords = {k: v for k, v in x.coords.items() if "time" not in v.dims}
    out = xr.DataArray(clim.astype(np.float32), dims=("period", *x.dims[1:]), coords=coords)
    attrs: dict[str, Any] = {"kind": kind}
    if kind == "hour_dayofyear":
        attrs["hours"] = list(hours or ())
    return out.assign_coords(period=xr.DataArray(np.arange(1, n + 1), dims="period", attrs=attrs))


class _Anomalies:
    """(x - climatology[period] - mean) / std of a block's time slices, x the stack of the
    variables ``fields`` (axis 1), computed variable by variable into buffers made once per
    block (see :func:`_period_sums` on why): the same operations, dtypes and values as the
    expression on the stacked slice, in float64 from the subtraction of the mean on."""

    def __init__(
        self, fields: tuple[np.ndarray, ...], clim: np.ndarray, mean: np.ndarray, std: np.ndarray
    ) -> None:
        grid = fields[0].shape[1:]
        self.fields, self.clim = fields, clim
        self.mean, self.std = mean.reshape(-1), std.reshape(-1)  # per variable
        self.step = chunking.slice_steps(len(fields) * int(np.prod(grid)))
        rows = (min(self.step, fields[0].shape[0]), *grid)
        self.seasonal = np.empty(rows, dtype=clim.dtype)
        diff = np.result_type(fields[0].dtype, clim.dtype)
        self.diff = self.seasonal if diff == clim.dtype else np.empty(rows, dtype=diff)
        wide = np.result_type(diff, self.mean.dtype, self.std.dtype)
        self.wide = np.empty((rows[0], len(fields), *grid), dtype=wide)

    def slices(self) -> range:
        return range(0, self.fields[0].shape[0], self.step)

    def __call__(self, t: int, idx: np.ndarray) -> np.ndarray:
        """The anomalies of steps ``t : t + step`` (periods ``idx``), stacked, in float64 (a
        buffer)."""
        n = idx.shape[0]
        seasonal, diff, wide = self.seasonal[:n], self.diff[:n], self.wide[:n]
        for v, field in enumerate(self.fields):
            np.take(self.clim[:, v], idx, axis=0, out=seasonal, mode="clip")  # all valid
            np.subtract(field[t : t + n], seasonal, out=diff)
            # Arrays of one value, not scalars: NumPy promotes the same way (to float64).
            np.subtract(diff, self.mean[v : v + 1], out=wide[:, v])
            np.divide(wide[:, v], self.std[v : v + 1], out=wide[:, v])
        return wide


def _block_anomaly(
    b: np.ndarray,
    blocks: Blocks,
    idx: np.ndarray,
    clim: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
) -> np.ndarray:
    """The float32 anomalies of block ``b`` (time, variable, ...)."""
    fields, idx = blocks.read(int(b[0]), idx)
    out = np.empty((fields[0].shape[0], len(fields), *fields[0].shape[1:]), dtype=np.float32)
    # Slices of the block: the float64 temporaries stay a few MB (same values as at once).
    anomalies = _Anomalies(tuple(fields), clim, mean, std)
    for t in anomalies.slices():
        out[t : t + anomalies.step] = anomalies(t, idx[t : t + anomalies.step])
    return out


def anomalies(
    x: xr.DataArray,
    clim: xr.DataArray,
    mean: np.ndarray,
    std: np.ndarray,
    blocks: Blocks | None = None,
) -> xr.DataArray:
    """(x - climatology[period(t)] - mean) / std, blockwise over time chunks (no big graph):
    one task per block, which reads the block (see :class:`Blocks`) and which the store's
    write of the block joins. ``blocks``: as for :func:`climatology`."""
    period = clim["period"].attrs
    idx, _ = period_index(x["time"], period["kind"], period.get("hours"))
    blocks = blocks or Blocks(fields_of(x))
    axes = "vyxwz"[: 1 + len(blocks.grid)]
    out = da.blockwise(
        _block_anomaly, "t" + axes, blocks.ids(), "t", blocks.node(), None, dask.delayed(idx),
        None, dask.delayed(clim.values), None, mean=np.asarray(mean, np.float64),
        std=np.asarray(std, np.float64), dtype=np.float32, adjust_chunks={"t": blocks.chunks},
        new_axes=dict(zip(axes, (blocks.n_fields, *blocks.grid), strict=True)),
    )  # fmt: skip
    return xr.DataArray(out, dims=x.dims, coords=x.coords)


def _anomaly_moments(
    fields: tuple[np.ndarray, ...], idx: np.ndarray, clim: np.ndarray
) -> np.ndarray:
    """Count, sum and sum of squares of the finite float32 anomalies (no mean or std yet) per
    variable (axis 1) of one block: (3, n_vars, 1, ...).

    In float64, slice by slice, so the block's anomalies are never all in memory; the same
    slices and sums as of the whole block's anomalies (made first, then summed).
    """
    zero, one = np.zeros(len(fields)), np.ones(len(fields))
    anomalies = _Anomalies(fields, clim, zero, one)
    out = np.zeros((3, len(fields)), dtype=np.float64)
    axes = (0, *range(2, fields[0].ndim + 1))
    rows = anomalies.wide.shape
    stored = np.empty(rows, dtype=np.float32)
    finite, bad = np.empty(rows, dtype=bool), np.empty(rows, dtype=bool)
    square = np.empty(rows, dtype=np.float64)
    for t in anomalies.slices():
        a = anomalies(t, idx[t : t + anomalies.step])
        n = a.shape[0]
        np.copyto(stored[:n], a, casting="unsafe")  # as stored: float32
        s, f = a, finite[:n]
        np.copyto(s, stored[:n])
        np.isfinite(s, out=f)
        np.copyto(s, 0.0, where=np.logical_not(f, out=bad[:n]))
        out[0] += f.sum(axis=axes)
        out[1] += s.sum(axis=axes)
        out[2] += np.multiply(s, s, out=square[:n]).sum(axis=axes)
    return out.reshape(3, len(fields), *(1,) * (fields[0].ndim - 1))


def _canonical_blocks(
    raw: xr.Dataset, variables: list[str], coarsen: int
) -> tuple[xr.DataArray, list[da.Array]]:
    """The variables as one (time, variable, lat, lon) float32 array, coarsened, in the
    canonical time blocks, and each variable's blocks apart (what the passes read)."""
    fields = []
    for v in variables:
        # Each variable apart, whole fields per chunk: the passes read the variables' blocks
        # apart, so that a block's loading and use are one task (a rechunk across variables
        # is not blockwise: Dask would keep every variable's block and the stacked one as
        # results), and never stack a whole block.
        f = raw[v].transpose("time", "lat", "lon").astype(np.float32)
        f = f.copy(deep=False, data=as_dask(f.data).rechunk({1: -1, 2: -1}))
        if coarsen > 1:
            f = f.coarsen(lat=coarsen, lon=coarsen, boundary="trim").mean()
        fields.append(f)
    # Canonical time blocks, set by the data's shape alone: the reductions then add up in the
    # same order whatever the input's chunking or the number of workers, so results are
    # bit-identical across both (floating-point sums depend on their order).
    first = fields[0]
    step = chunking.bytes_per_step(len(variables), first.sizes["lat"], first.sizes["lon"])
    length = chunking.time_chunk_length(first.sizes["time"], step)
    blocks = [f.data.rechunk({0: length}) for f in fields]
    data = da.blockwise(
        _stack_fields, "tvyx", *(a for b in blocks for a in (b, "tyx")),
        new_axes={"v": len(variables)}, dtype=np.float32, concatenate=True,
    )  # fmt: skip
    coords = {k: c for k, c in first.coords.items() if set(c.dims) <= {"time", "lat", "lon"}}
    names = np.array(variables, dtype=object)  # as to_array makes it (the store's dtype)
    x = xr.DataArray(
        data, dims=("time", "variable", "lat", "lon"), coords={**coords, "variable": names}
    )
    return x, blocks


def _stack_fields(*fields: np.ndarray) -> np.ndarray:
    return np.stack(fields, axis=1)


def _normalisation(
    x: xr.DataArray,
    clim: xr.DataArray,
    variables: list[str],
    steps: slice,
    blocks: Blocks | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per variable of the anomalies over the time ``steps`` (the training
    period) of ``x`` (float64)."""
    period = clim["period"].attrs
    idx, _ = period_index(x["time"], period["kind"], period.get("hours"))
    blocks = blocks or Blocks(fields_of(x))
    shape = (3, len(variables), *(1,) * (x.ndim - 2))  # a block's moments per variable
    total = sum_over_steps(_anomaly_moments, blocks, idx, steps, shape, clim.values)
    count, total, total_sq = total.reshape(3, len(variables))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean, sq = total / count, total_sq / count
    std = np.sqrt(np.maximum(sq - mean**2, 0.0))
    bad = [v for v, s in zip(variables, std, strict=True) if not np.isfinite(s) or s == 0]
    if bad:
        raise ValueError(
            f"variable(s) {bad} have no variability in the training period; cannot normalise"
        )
    return mean, std


def _coarsened_kind(raw: xr.Dataset, coarsen: int) -> str:
    """The grid kind after coarsening: a global grid whose longitudes do not divide by the
    factor loses its last columns ("trim"), and the gap they leave is no longer periodic."""
    n_lon = raw.sizes["lon"]
    if grid.kind(raw) == "global" and n_lon % coarsen:
        log.warning(
            "preprocess.coarsen %d trims %d of %d longitudes off the global grid, which is "
            "regional from here (zero padding at its edges); a factor dividing %d keeps it "
            "global", coarsen, n_lon % coarsen, n_lon, n_lon,
        )  # fmt: skip
        return "regional"
    return grid.kind(raw)


def preprocess(raw: xr.Dataset, params: dict[str, Any]) -> tuple[xr.Dataset, dict]:
    """The preprocessed dataset (lazy where large) and the stats for stats.json."""
    variables = params["variables"]
    raw = raw.reset_coords(drop=True)  # ingest's per-step summary is not carried on
    axis = check_raw(raw, variables)
    kind = climatology_for(params["climatology"], axis.resolution, f"raw data ({axis.frequency})")
    x, fields = _canonical_blocks(raw, variables, params["coarsen"])
    bounds = splits.split_indices(raw, params["split"], "raw data")
    t0, t1 = bounds["train"]
    train = slice(t0, t1)
    window = params["climatology_window"]
    hours = hours_of_day(x["time"][train]) if kind == "hour_dayofyear" else None
    log.info("climatology (%s, window %d) over %d training steps", kind, window, t1 - t0)
    blocks = Blocks(fields)
    clim = climatology(x, kind, window, hours, train, blocks)
    mean, std = _normalisation(x, clim, variables, train, blocks)
    out = xr.Dataset(
        {
            "anomaly": anomalies(x, clim, mean, std, blocks),
            "climatology": clim,
            "mean": ("variable", mean.astype(np.float64)),
            "std": ("variable", std.astype(np.float64)),
        },
        coords={"split": ("time", splits.labels(x.sizes["time"], bounds))},
        attrs={**axis.attrs(), "grid": _coarsened_kind(raw, params["coarsen"])},
    )
    out["anomaly"].attrs = {"long_name": "normalised anomaly", "units": "1"}
    out["climatology"].attrs = {"long_name": f"{kind} climatology of the training period"}
    units = {v: raw[v].attrs.get("units", "") for v in variables}
    stats = {
        "variables": {
            v: {"mean": float(m), "std": float(s), "units": units[v]}
            for v, m, s in zip(variables, mean, std, strict=True)
        },
        "counts": {part: i1 - i0 for part, (i0, i1) in bounds.items()},
        "climatology": kind,
        "grid": [int(x.sizes["lat"]), int(x.sizes["lon"])],
        "grid_kind": out.attrs["grid"],
        **axis.attrs(),
    }
    return out, stats
