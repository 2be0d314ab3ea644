"""Scoring of normalised-anomaly forecasts against the test targets and the two baselines.

Conventions (see :mod:`hpcpipe.evaluate.metrics` for the metric formulas):

* RMSE and ACC are computed in physical units:
  ``x = (a * std[v] + mean[v]) + C[period(valid time)]`` with ``a`` the normalised anomaly and
  ``period`` day of year or month (``climatology.period.attrs["kind"]``).
* Observations are the test targets where the features mask is True (masked points excluded).
* Baselines, on exactly the same samples and points:
  - persistence: the physical state at the initial time (lag 0), carried to every lead;
  - climatology: ``C`` at the valid time. Its anomaly is identically 0, so its ACC is 0/0; it is
    reported as 0 by definition (no skill in the anomaly pattern).
* Extremes: on normalised anomalies against the per-grid-point ``quantile`` of the
  ``thresholds`` step (event = anomaly > quantile). The climatology forecast's normalised
  anomaly is ``-mean/std`` (physical anomaly 0), persistence's is the lag-0 anomaly.
* Other forecasters (``evaluate.external``: stored forecasts made elsewhere) are scored like
  the model, on the same samples and points, and listed after the baselines.
* JSON cannot hold NaN: undefined values (e.g. precision 0/0) are written as null.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import xarray as xr

from hpcpipe.evaluate import metrics
from hpcpipe.periods import period_of
from hpcpipe.store import decode_str

log = logging.getLogger("hpcpipe.evaluate")

FORECASTERS = ("model", "persistence", "climatology")
BASELINES = ("persistence", "climatology")
SAMPLE = "sample"

_XR = TypeVar("_XR", xr.DataArray, xr.Dataset)


@dataclass(frozen=True)
class Verification:
    """What is scored, all on the same samples and points (sample, lead, variable, lat, lon)."""

    mask: xr.DataArray
    quantile: xr.DataArray
    climatology: xr.DataArray  # C at the valid time, physical units
    obs: xr.DataArray  # physical units
    obs_norm: xr.DataArray  # normalised anomaly
    physical: dict[str, xr.DataArray]  # forecaster -> forecast in physical units
    normalised: dict[str, xr.DataArray]  # forecaster -> forecast as normalised anomaly


def evaluate_forecasts(
    pred_norm: xr.DataArray,
    test: xr.Dataset,
    pre: xr.Dataset,
    params: dict,
    others: Mapping[str, xr.DataArray] | None = None,
) -> dict:
    """Score normalised-anomaly forecasts ``pred_norm`` (sample, lead, variable, lat, lon).

    ``test``: features/test.zarr; ``pre``: preprocessed.zarr with the ``quantile`` of
    thresholds.zarr (see docs/data-contracts.md). ``others``: more forecasters by name (the
    ``evaluate.external`` stores), normalised anomalies like ``pred_norm``, scored on the same
    samples and points; they come after the model and the baselines (FORECASTERS).
    Returns ``{"metrics": <metrics.json content without model/seed>, "skill": Dataset(rmse,
    acc, precision, recall, f1 over forecaster, variable, lead), "error_maps": DataArray
    (forecaster, variable, lat, lon) at the headline lead, "variables", "leads"}``.
    """
    variables = [str(v) for v in params["variables"]]
    headline = int(params["headline_lead"])
    test, pre, pred_norm = as_str_coord(test), as_str_coord(pre), as_str_coord(pred_norm)
    others = {k: as_str_coord(f) for k, f in (others or {}).items()}
    leads = _check_inputs(pred_norm, test, pre, params, others)
    v = verification(pred_norm, test, pre, variables, others)
    skill = skill_scores(v)
    return {
        "metrics": metrics_dict(skill, variables, leads, headline, params, test.sizes[SAMPLE]),
        "skill": skill,
        "error_maps": error_maps(v, headline),
        "variables": variables,
        "leads": leads,
    }


# ----------------------------------------------------------------------------- checks


def check_not_empty(test: xr.Dataset) -> None:
    if test.sizes.get(SAMPLE, 0) == 0:
        raise ValueError("the test features store has no samples: check preprocess.split.test")


def _check_inputs(
    pred_norm: xr.DataArray,
    test: xr.Dataset,
    pre: xr.Dataset,
    params: dict,
    others: Mapping[str, xr.DataArray],
) -> list[int]:
    """Fail early with a clear message; returns the test store's leads."""
    check_not_empty(test)
    leads = [int(x) for x in test["lead"].values]
    headline = int(params["headline_lead"])
    if headline not in leads:
        raise ValueError(f"evaluate.headline_lead={headline} is not one of the leads {leads}")
    _check_quantile(pre, params)
    for name, f in {"model": pred_norm, **others}.items():
        if f.shape != test["targets"].shape:
            raise ValueError(
                f"predictions of {name!r} {f.shape} do not match targets {test['targets'].shape}"
            )
    if clash := sorted(set(others) & set(FORECASTERS)):
        raise ValueError(f"forecasters named {clash} clash with the built-in ones {FORECASTERS}")
    return leads


def _check_quantile(pre: xr.Dataset, params: dict) -> None:
    # The thresholds step computes the quantile; a different q there would mislabel results.
    q_attr = pre["quantile"].attrs.get("quantile")
    q = params.get("extreme_quantile")
    if q_attr is not None and q is not None and not math.isclose(float(q_attr), float(q)):
        raise ValueError(
            f"evaluate.extreme_quantile={q} but the thresholds store holds the {q_attr} quantile"
        )


def _warn_nonfinite(f_norm: xr.DataArray, mask: xr.DataArray) -> None:
    bad = int((f_norm.isnull() & mask).sum())
    if bad:
        log.warning("%d forecast values at valid points are not finite; they are excluded", bad)


# ----------------------------------------------------------------------------- fields


def as_str_coord(obj: _XR) -> _XR:
    # Zarr may hand string coordinates back as bytes or objects; .sel needs plain str.
    return obj.assign_coords(variable=decode_str(obj["variable"].values))


def _period_kind(clim: xr.DataArray) -> str:
    kind = clim["period"].attrs.get("kind")
    if kind is None:
        kind = "month" if clim.sizes["period"] == 12 else "dayofyear"
        log.warning("climatology.period has no attrs['kind']; assuming %r", kind)
    return str(kind)


def climatology_at(clim: xr.DataArray, times: xr.DataArray, kind: str) -> xr.DataArray:
    """``C[period(t)]`` for every time in ``times`` (any dims); clear error for a missing period."""
    period = period_of(times, kind, clim["period"].attrs.get("hours"))
    missing = np.setdiff1d(np.unique(period.values), clim["period"].values)
    if missing.size:
        raise ValueError(f"climatology has no {kind} {missing.tolist()} needed by the test times")
    return clim.sel(period=period).drop_vars("period", errors="ignore")


@dataclass(frozen=True)
class Normalisation:
    """What turns normalised anomalies into physical values and back (float64)."""

    mean: xr.DataArray  # (variable)
    std: xr.DataArray  # (variable)
    climatology: xr.DataArray  # (period, variable, lat, lon), physical units
    kind: str  # the climatology's period kind

    def at(self, times: xr.DataArray) -> xr.DataArray:
        """C at ``times`` (any dims): the climatology that physical values are relative to."""
        return climatology_at(self.climatology, times.reset_coords(drop=True), self.kind)


def normalisation(pre: xr.Dataset, variables: list[str]) -> Normalisation:
    sel = {"variable": variables}
    return Normalisation(
        mean=pre["mean"].sel(sel).astype(np.float64).load(),
        std=pre["std"].sel(sel).astype(np.float64).load(),
        climatology=pre["climatology"].sel(sel).astype(np.float64).load(),
        kind=_period_kind(pre["climatology"]),
    )


def to_physical(a: xr.DataArray, mean: xr.DataArray, std: xr.DataArray, c: xr.DataArray) -> Any:
    """x = a * std + mean + C: a normalised anomaly in physical units."""
    return a * std + mean + c


def to_normalised(x: xr.DataArray, mean: xr.DataArray, std: xr.DataArray, c: xr.DataArray) -> Any:
    """a = (x - C - mean) / std: the inverse of :func:`to_physical`."""
    return (x - c - mean) / std


def verification(
    pred_norm: xr.DataArray,
    test: xr.Dataset,
    pre: xr.Dataset,
    variables: list[str],
    others: Mapping[str, xr.DataArray] | None = None,
) -> Verification:
    """Model, baselines and observations, normalised and in physical units (x = a*std + mean + C)."""
    sel = {"variable": variables}
    norm = normalisation(pre, variables)
    mean, std = norm.mean, norm.std
    mask = test["mask"].sel(sel).astype(bool).load()
    init_time = test["time"].reset_coords(drop=True)
    c_valid = norm.at(test["valid_time"])
    c_init = norm.at(init_time)

    coords = {SAMPLE: test[SAMPLE], "lead": test["lead"]}
    given = {"model": pred_norm, **(others or {})}
    f_norm = {
        k: f.sel(sel).astype(np.float64).assign_coords(coords).where(mask) for k, f in given.items()
    }
    o_norm = test["targets"].sel(sel).astype(np.float64).load().where(mask)
    for f in f_norm.values():
        _warn_nonfinite(f, mask)
    a0 = pre["anomaly"].sel(sel).sel(time=init_time).reset_coords(drop=True)
    a0 = a0.astype(np.float64).load()
    persistence = _persistence(a0, mean, std, c_init, mask, test["lead"], o_norm.dims)
    climatology = _climatology(c_valid, mean, std, mask, o_norm)
    return Verification(
        mask=mask,
        quantile=pre["quantile"].sel(sel).load(),
        climatology=c_valid,
        obs=to_physical(o_norm, mean, std, c_valid),
        obs_norm=o_norm,
        physical={
            "model": to_physical(f_norm["model"], mean, std, c_valid),
            "persistence": persistence[0],
            "climatology": climatology[0],
            **{k: to_physical(f, mean, std, c_valid) for k, f in f_norm.items() if k != "model"},
        },
        normalised={
            "model": f_norm["model"],
            "persistence": persistence[1],
            "climatology": climatology[1],
            **{k: f for k, f in f_norm.items() if k != "model"},
        },
    )


def _persistence(
    a0: xr.DataArray,
    mean: xr.DataArray,
    std: xr.DataArray,
    c_init: xr.DataArray,
    mask: xr.DataArray,
    lead: xr.DataArray,
    dims: tuple[Hashable, ...],
) -> tuple[xr.DataArray, xr.DataArray]:
    """The state at the initial time (anomaly ``a0``) at every lead: (physical, normalised)."""
    physical = to_physical(a0, mean, std, c_init).where(mask).expand_dims(lead=lead)
    normalised = a0.where(mask).expand_dims(lead=lead).transpose(*dims)
    return physical, normalised


def _climatology(
    c_valid: xr.DataArray,
    mean: xr.DataArray,
    std: xr.DataArray,
    mask: xr.DataArray,
    like: xr.DataArray,
) -> tuple[xr.DataArray, xr.DataArray]:
    """C at the valid time: (physical, normalised); its physical anomaly is 0, so a = -mean/std."""
    return c_valid.where(mask), (-mean / std).broadcast_like(like).where(mask)


# ----------------------------------------------------------------------------- scores


def _names(v: Verification) -> list[str]:
    return list(v.physical)  # FORECASTERS, then the others in their order


def _forecaster_dim(names: list[str]) -> xr.DataArray:
    return xr.DataArray(names, dims="forecaster", name="forecaster")


def skill_scores(v: Verification) -> xr.Dataset:
    """rmse, acc, precision, recall, f1 over (forecaster, variable, lead)."""
    names = _names(v)
    fc = _forecaster_dim(names)
    rmse = xr.concat([metrics.rmse(v.physical[k], v.obs, v.mask, SAMPLE) for k in names], fc)
    acc = xr.concat(
        [metrics.acc(v.physical[k], v.obs, v.climatology, v.mask, SAMPLE) for k in names],
        fc,
    )
    # The climatology forecast has zero anomaly: its ACC is 0/0, defined as 0.
    acc.loc[{"forecaster": "climatology"}] = 0.0
    ext = xr.concat(
        [
            metrics.extreme_scores(v.normalised[k], v.obs_norm, v.quantile, v.mask, SAMPLE)
            for k in names
        ],
        fc,
    )
    return xr.Dataset(
        {"rmse": rmse, "acc": acc, **{s: ext.sel(score=s, drop=True) for s in metrics.SCORES}}
    ).transpose("forecaster", "variable", "lead")


def error_maps(v: Verification, headline: int) -> xr.DataArray:
    """Per-grid-point RMSE at the headline lead over (forecaster, variable, lat, lon)."""
    obs = v.obs.sel(lead=headline)
    names = _names(v)
    maps = [metrics.rmse_map(v.physical[k].sel(lead=headline), obs, v.mask, SAMPLE) for k in names]
    return xr.concat(maps, _forecaster_dim(names)).transpose("forecaster", "variable", "lat", "lon")


# ----------------------------------------------------------------------------- serialisation


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _by_lead(da: xr.DataArray, variables: list[str], leads: list[int]) -> dict:
    # Lead keys are strings, as JSON requires.
    return {
        k: {
            v: {str(ld): _num(da.sel(forecaster=k, variable=v, lead=ld)) for ld in leads}
            for v in variables
        }
        for k in decode_str(da["forecaster"].values)
    }


def _extremes(skill: xr.Dataset, variables: list[str], headline: int) -> dict:
    return {
        k: {
            v: {
                s: _num(skill[s].sel(forecaster=k, variable=v, lead=headline))
                for s in metrics.SCORES
            }
            for v in variables
        }
        for k in decode_str(skill["forecaster"].values)
    }


def _beats_baselines(skill: xr.Dataset, variables: list[str], headline: int) -> dict:
    """Per variable: is the model's headline RMSE below every baseline's?"""
    rmse_h = skill["rmse"].sel(lead=headline)

    def rmse_of(k: str, v: str) -> float:
        return float(rmse_h.sel(forecaster=k, variable=v))

    return {v: bool(all(rmse_of("model", v) < rmse_of(b, v) for b in BASELINES)) for v in variables}


def metrics_dict(
    skill: xr.Dataset, variables: list[str], leads: list[int], headline: int, params: dict, n: int
) -> dict:
    """The JSON-ready metrics (NaN -> null)."""
    return {
        "headline_lead": headline,
        "extreme_quantile": params.get("extreme_quantile"),
        "variables": variables,
        "leads": leads,
        "forecasters": decode_str(skill["forecaster"].values),
        "n_samples": int(n),
        "rmse": _by_lead(skill["rmse"], variables, leads),
        "acc": _by_lead(skill["acc"], variables, leads),
        "extremes": _extremes(skill, variables, headline),
        "beats_baselines": _beats_baselines(skill, variables, headline),
    }


def metrics_table(skill: xr.Dataset) -> pd.DataFrame:
    """Long table: forecaster, variable, lead, rmse, acc, precision, recall, f1."""
    df = skill.to_dataframe().reset_index()
    cols = ["forecaster", "variable", "lead", "rmse", "acc", *metrics.SCORES]
    return (
        df[cols]
        .sort_values(["forecaster", "variable", "lead"], kind="stable")
        .reset_index(drop=True)
    )
