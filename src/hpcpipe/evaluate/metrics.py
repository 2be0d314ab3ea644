"""Forecast verification metrics, as WeatherBench 2 (Rasp et al. 2024) defines them.

Pure xarray/numpy: every function takes DataArrays with dims ``(time, lat, lon)`` (the name of
the time dimension is ``time_dim``; any extra dims such as ``lead`` or ``variable`` broadcast
and are kept) and returns a DataArray. Nothing is loaded, written or logged here.

Conventions shared by all functions
-----------------------------------
* Latitude weights ``w_i = cos(lat_i) / mean_i cos(lat_i)`` (mean over the grid's latitudes,
  so the weights average to 1 and sum to ``n_lat``).
* Validity mask ``m_tij`` = 1 where the optional ``mask`` is True *and* forecast, observation
  (and climatology / threshold where used) are all finite; 0 elsewhere. Masked or NaN points are
  excluded from every sum; they never count as an error of 0.
* Time means are means over the time steps that have at least one valid point (a time step
  with nothing valid is skipped, not counted as 0).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import xarray as xr

LAT = "lat"
LON = "lon"
SPACE = (LAT, LON)

SCORES = ("precision", "recall", "f1")
COUNTS = ("tp", "fp", "fn", "tn")


def lat_weights(lat: xr.DataArray) -> xr.DataArray:
    """Latitude weights ``w_i = cos(lat_i) / mean_i cos(lat_i)`` (lat in degrees); mean 1."""
    w = np.cos(np.deg2rad(lat.astype(np.float64)))
    w = w / w.mean()
    return w.rename("lat_weight")


def valid_mask(*arrays: xr.DataArray, mask: xr.DataArray | None = None) -> xr.DataArray:
    """``m``: True where ``mask`` (if given) is True and every array is finite (broadcast)."""
    valid = xr.DataArray(True)
    for a in arrays:
        valid = valid & a.notnull()
    if mask is not None:
        valid = valid & mask.astype(bool)
    return valid


def _time_mean(x: xr.DataArray, time_dim: Hashable) -> xr.DataArray:
    # sum/count instead of mean(skipna) so that an all-NaN column gives NaN without a warning.
    n = x.count(time_dim)
    return x.sum(time_dim, skipna=True) / n.where(n > 0)


def weighted_mse_per_time(
    forecast: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
) -> xr.DataArray:
    """Latitude-weighted spatial MSE of each time step.

    ``MSE_t = sum_{i,j} w_i m_tij (f_tij - o_tij)^2 / sum_{i,j} w_i m_tij``;
    NaN for a time step without valid points.
    """
    valid = valid_mask(forecast, obs, mask=mask)
    w = lat_weights(obs[LAT]) * valid
    err2 = ((forecast - obs) ** 2).where(valid, 0.0)
    num = (w * err2).sum(SPACE)
    den = w.sum(SPACE)
    return num / den.where(den > 0)


def rmse(
    forecast: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    time_dim: Hashable = "time",
) -> xr.DataArray:
    """Latitude-weighted RMSE, WB2 convention: square root of the time-mean MSE.

    ``RMSE = sqrt( mean_t [ sum_{i,j} w_i m_tij (f-o)^2 / sum_{i,j} w_i m_tij ] )``.
    (Not the time mean of per-step RMSEs, which would be smaller by Jensen's inequality.)
    """
    return np.sqrt(_time_mean(weighted_mse_per_time(forecast, obs, mask), time_dim)).rename("rmse")


def acc(
    forecast: xr.DataArray,
    obs: xr.DataArray,
    climatology: xr.DataArray,
    mask: xr.DataArray | None = None,
    time_dim: Hashable = "time",
) -> xr.DataArray:
    """Latitude-weighted anomaly correlation coefficient, time mean of per-step ACC (WB2).

    ``ACC = mean_t [ sum w m f' o' / sqrt( sum w m f'^2 * sum w m o'^2 ) ]`` with
    ``f' = f - C``, ``o' = o - C`` (C = climatology at the valid time), sums over (lat, lon).
    As in WB2 the spatial mean of the anomalies is *not* removed again (uncentred correlation),
    so a forecast with the right pattern but a uniform offset is penalised.
    A time step where either anomaly is identically 0 (e.g. the climatology forecast itself)
    has ACC 0/0 = NaN and is skipped; if all are, the result is NaN (callers that score the
    climatology forecast set its ACC to 0 by definition).
    """
    valid = valid_mask(forecast, obs, climatology, mask=mask)
    w = lat_weights(obs[LAT]) * valid
    fa = (forecast - climatology).where(valid, 0.0)
    oa = (obs - climatology).where(valid, 0.0)
    num = (w * fa * oa).sum(SPACE)
    den = np.sqrt((w * fa**2).sum(SPACE) * (w * oa**2).sum(SPACE))
    per_time = num / den.where(den > 0)
    return _time_mean(per_time, time_dim).rename("acc")


def rmse_map(
    forecast: xr.DataArray,
    obs: xr.DataArray,
    mask: xr.DataArray | None = None,
    time_dim: Hashable = "time",
) -> xr.DataArray:
    """Per-grid-point RMSE over time: ``sqrt( mean_t [ m_tij (f-o)^2 ] )`` over valid t.

    No latitude weight (it is a map); NaN where a point is never valid.
    """
    valid = valid_mask(forecast, obs, mask=mask)
    err2 = ((forecast - obs) ** 2).where(valid)
    return np.sqrt(_time_mean(err2, time_dim)).rename("rmse_map")


def extreme_counts(
    forecast_anom: xr.DataArray,
    obs_anom: xr.DataArray,
    threshold: xr.DataArray,
    mask: xr.DataArray | None = None,
    time_dim: Hashable = "time",
) -> xr.DataArray:
    """Contingency counts of extreme events over all valid points and times.

    Event: ``anomaly > threshold`` (strict), with ``threshold`` the per-grid-point quantile of
    the training-period anomalies. Counts are plain (not latitude-weighted) numbers of valid
    (time, lat, lon) points; returns a DataArray with a new dim ``count`` = tp, fp, fn, tn.
    """
    valid = valid_mask(forecast_anom, obs_anom, threshold, mask=mask)
    f_ev = forecast_anom > threshold
    o_ev = obs_anom > threshold
    dims: Sequence[Hashable] = (time_dim, *SPACE)
    parts = [
        (valid & f_ev & o_ev).sum(dims),
        (valid & f_ev & ~o_ev).sum(dims),
        (valid & ~f_ev & o_ev).sum(dims),
        (valid & ~f_ev & ~o_ev).sum(dims),
    ]
    return xr.concat(parts, dim=xr.DataArray(list(COUNTS), dims="count", name="count")).rename(
        "extreme_counts"
    )


def scores_from_counts(counts: xr.DataArray) -> xr.DataArray:
    """Precision, recall and F1 from ``extreme_counts`` (dim ``count``) -> dim ``score``.

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
    ``F1 = 2 tp / (2 tp + fp + fn)`` (= harmonic mean of precision and recall where both are
    defined). Any 0/0 is NaN: precision when no event is forecast, recall when none occurs,
    F1 when neither. F1 is 0 (not NaN) when events occur or are forecast but none is hit.
    """
    c = counts.astype(np.float64)
    tp, fp, fn = (c.sel(count=k, drop=True) for k in ("tp", "fp", "fn"))

    def ratio(num: xr.DataArray, den: xr.DataArray) -> xr.DataArray:
        return num / den.where(den > 0)

    parts = [ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)]
    return xr.concat(parts, dim=xr.DataArray(list(SCORES), dims="score", name="score")).rename(
        "extreme_scores"
    )


def extreme_scores(
    forecast_anom: xr.DataArray,
    obs_anom: xr.DataArray,
    threshold: xr.DataArray,
    mask: xr.DataArray | None = None,
    time_dim: Hashable = "time",
) -> xr.DataArray:
    """Precision, recall and F1 of extreme-event detection (dim ``score``); see the two above."""
    return scores_from_counts(extreme_counts(forecast_anom, obs_anom, threshold, mask, time_dim))
