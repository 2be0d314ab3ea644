"""Evaluation of a trained model on the test split, against persistence and climatology.

``evaluate`` = load the checkpoint + predict (hpcpipe.models) + ``evaluate_forecasts`` (all the
science, testable without a model) + ``write_outputs`` (metrics.json, metrics.csv, plots).

Conventions (see hpcpipe.metrics for the metric formulas):
* RMSE and ACC are computed in physical units:
  ``x = (a * std[v] + mean[v]) + C[period(valid time)]`` with ``a`` the normalised anomaly and
  ``period`` day of year or month (``climatology.period.attrs["kind"]``).
* Observations are the test targets where the features mask is True (masked points excluded).
* Baselines, on exactly the same samples and points:
  - persistence: the physical state at the initial time (lag 0), carried to every lead;
  - climatology: ``C`` at the valid time. Its anomaly is identically 0, so its ACC is 0/0; it is
    reported as 0 by definition (no skill in the anomaly pattern).
* Extremes: on normalised anomalies against the preprocessed per-grid-point ``quantile``
  (event = anomaly > quantile). The climatology forecast's normalised anomaly is ``-mean/std``
  (physical anomaly 0), persistence's is the lag-0 anomaly.
* JSON cannot hold NaN: undefined values (e.g. precision 0/0) are written as null.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from hpcpipe import metrics
from hpcpipe.atomic import atomic_path, write_json, write_text
from hpcpipe.periods import period_of

log = logging.getLogger("hpcpipe.evaluate")

FORECASTERS = ("model", "persistence", "climatology")
BASELINES = ("persistence", "climatology")
SAMPLE = "sample"
PREDICT_BATCH = 64


# ----------------------------------------------------------------------------- the step


def evaluate(
    model_path: str | os.PathLike[str],
    features_test_dir: str | os.PathLike[str],
    preprocessed_dir: str | os.PathLike[str],
    thresholds_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    params: dict,
    threads: int | None = None,
) -> dict:
    """Evaluate one trained model on the test split; write metrics and plots to ``out_dir``.

    ``params``: config section ``evaluate`` (headline_lead, extreme_quantile) plus
    ``variables``; optional ``model``/``seed`` override the names read from the checkpoint,
    optional ``batch_size`` is the prediction batch (default 64; memory only, not results).
    Returns the content of metrics.json.
    """
    # Imported here so that the metric code (and its tests) do not depend on torch/models.
    from hpcpipe.models import load_model, predict
    from hpcpipe.store import open_store

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    model_path = Path(model_path)
    model, meta = load_model(model_path, map_location="cpu")
    test = open_store(features_test_dir, "test features")
    pre = open_store(preprocessed_dir, "preprocessed data")
    # Thresholds are their own step (so a new quantile reruns evaluation only).
    thr = open_store(thresholds_dir, "extreme thresholds")
    pre = pre.assign(
        quantile=thr["quantile"].assign_attrs(quantile=thr.attrs.get("extreme_quantile"))
    )
    _check_meta(meta, test)
    _check_not_empty(test)

    pred = _predict_in_blocks(
        model, predict, test["inputs"], int(params.get("batch_size", PREDICT_BATCH))
    )
    pred_norm = xr.DataArray(pred, dims=test["targets"].dims, coords=test["targets"].coords)
    result = evaluate_forecasts(pred_norm, test, pre, params)

    model_name, seed = _identity(model_path, meta, params)
    result["metrics"] = {"model": model_name, "seed": seed, **result["metrics"]}
    write_outputs(result, out_dir, history_csv=model_path.parent / "history.csv")
    log.info(
        "%s seed %s: headline RMSE %s; beats baselines %s",
        model_name,
        seed,
        {
            v: result["metrics"]["rmse"]["model"][v][str(result["metrics"]["headline_lead"])]
            for v in result["variables"]
        },
        result["metrics"]["beats_baselines"],
    )
    return result["metrics"]


def _predict_in_blocks(
    model: Any, predict: Any, inputs: xr.DataArray, batch_size: int
) -> np.ndarray:
    """Predict store chunk by store chunk, so only one chunk of inputs is in memory at once."""
    from hpcpipe.logs import progress

    n = inputs.sizes[SAMPLE]
    chunks = inputs.chunksizes.get(SAMPLE) if inputs.chunks else None
    step = int(max(chunks)) if chunks else max(n, 1)
    starts = list(range(0, n, step))
    out = []
    for s in progress(starts, len(starts), "predict (chunks)"):
        block = np.asarray(inputs.isel({SAMPLE: slice(s, s + step)}).values, dtype=np.float32)
        out.append(np.asarray(predict(model, block, batch_size)))
    return np.concatenate(out, axis=0)


def _check_meta(meta: dict, test: xr.Dataset) -> None:
    """The checkpoint must have been trained for the test store's variables and leads."""
    if "variables" in meta and list(meta["variables"]) != _str_list(test["variable"].values):
        raise ValueError(
            f"model variables {list(meta['variables'])} differ from the test store's "
            f"{_str_list(test['variable'].values)}"
        )
    if "leads" in meta and [int(x) for x in meta["leads"]] != [int(x) for x in test["lead"].values]:
        raise ValueError(
            f"model leads {meta['leads']} differ from the test store's {test['lead'].values.tolist()}"
        )


def _identity(model_path: Path, meta: dict, params: dict) -> tuple[str, Any]:
    """Model name and seed: params, else checkpoint, else the path .../{model}/{seed}/model.pt."""
    name = params.get("model") or meta.get("model") or model_path.parent.parent.name
    seed = params.get("seed")
    if seed is None:
        seed = meta.get("seed", (meta.get("train_config") or {}).get("seed"))
    if seed is None:
        seed = model_path.parent.name
    if isinstance(seed, str) and seed.lstrip("-").isdigit():
        seed = int(seed)
    return str(name), seed


# ----------------------------------------------------------------------------- the science


def _str_list(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel()]


def _climatology_at(clim: xr.DataArray, times: xr.DataArray, kind: str) -> xr.DataArray:
    """``C[period(t)]`` for every time in ``times`` (any dims); clear error for a missing period."""
    period = period_of(times, kind)
    missing = np.setdiff1d(np.unique(period.values), clim["period"].values)
    if missing.size:
        raise ValueError(f"climatology has no {kind} {missing.tolist()} needed by the test times")
    return clim.sel(period=period).drop_vars("period", errors="ignore")


def _period_kind(clim: xr.DataArray) -> str:
    kind = clim["period"].attrs.get("kind")
    if kind is None:
        kind = "month" if clim.sizes["period"] == 12 else "dayofyear"
        log.warning("climatology.period has no attrs['kind']; assuming %r", kind)
    return str(kind)


def _as_str_coord(obj: xr.DataArray | xr.Dataset) -> Any:
    # Zarr may hand string coordinates back as bytes or objects; .sel needs plain str.
    return obj.assign_coords(variable=_str_list(obj["variable"].values))


def evaluate_forecasts(
    pred_norm: xr.DataArray, test: xr.Dataset, pre: xr.Dataset, params: dict
) -> dict:
    """Score normalised-anomaly forecasts ``pred_norm`` (sample, lead, variable, lat, lon).

    ``test``: features/test.zarr; ``pre``: preprocessed.zarr (see docs/data-contracts.md).
    Returns ``{"metrics": <metrics.json content without model/seed>, "skill": Dataset(rmse,
    acc, precision, recall, f1 over forecaster, variable, lead), "error_maps": DataArray
    (forecaster, variable, lat, lon) at the headline lead, "variables", "leads"}``.
    """
    variables = [str(v) for v in params["variables"]]
    headline = int(params["headline_lead"])
    test = _as_str_coord(test)
    pre = _as_str_coord(pre)
    pred_norm = _as_str_coord(pred_norm)
    _check_not_empty(test)
    leads = [int(x) for x in test["lead"].values]
    if headline not in leads:
        raise ValueError(f"evaluate.headline_lead={headline} is not one of the leads {leads}")
    _check_quantile(pre, params)
    if pred_norm.shape != test["targets"].shape:
        raise ValueError(
            f"predictions {pred_norm.shape} do not match targets {test['targets'].shape}"
        )

    sel = {"variable": variables}
    kind = _period_kind(pre["climatology"])
    mask = test["mask"].sel(sel).astype(bool).load()
    mean = pre["mean"].sel(sel).astype(np.float64).load()
    std = pre["std"].sel(sel).astype(np.float64).load()
    clim = pre["climatology"].sel(sel).astype(np.float64).load()
    quantile = pre["quantile"].sel(sel).load()
    init_time = test["time"].reset_coords(drop=True)
    valid_time = test["valid_time"].reset_coords(drop=True)

    # Forecasts and observations as normalised anomalies (sample, lead, variable, lat, lon).
    coords = {SAMPLE: test[SAMPLE], "lead": test["lead"]}
    f_norm = pred_norm.sel(sel).astype(np.float64).assign_coords(coords).where(mask)
    o_norm = test["targets"].sel(sel).astype(np.float64).load().where(mask)
    a0 = pre["anomaly"].sel(sel).sel(time=init_time).reset_coords(drop=True)
    a0 = a0.astype(np.float64).load()
    persist_norm = a0.where(mask).expand_dims(lead=test["lead"]).transpose(*o_norm.dims)
    clim_norm = (-mean / std).broadcast_like(o_norm).where(mask)
    _warn_nonfinite(f_norm, mask)

    # Physical units: x = a*std + mean + C[period(t)].
    c_valid = _climatology_at(clim, valid_time, kind)
    c_init = _climatology_at(clim, init_time, kind)
    fields = {
        "model": f_norm * std + mean + c_valid,
        "persistence": (a0 * std + mean + c_init).where(mask).expand_dims(lead=test["lead"]),
        "climatology": c_valid.where(mask),
    }
    obs = o_norm * std + mean + c_valid
    norm = {"model": f_norm, "persistence": persist_norm, "climatology": clim_norm}

    fc = xr.DataArray(list(FORECASTERS), dims="forecaster", name="forecaster")
    rmse = xr.concat([metrics.rmse(fields[k], obs, mask, SAMPLE) for k in FORECASTERS], fc)
    acc = xr.concat([metrics.acc(fields[k], obs, c_valid, mask, SAMPLE) for k in FORECASTERS], fc)
    # The climatology forecast has zero anomaly: its ACC is 0/0, defined as 0.
    acc.loc[{"forecaster": "climatology"}] = 0.0
    ext = xr.concat(
        [metrics.extreme_scores(norm[k], o_norm, quantile, mask, SAMPLE) for k in FORECASTERS], fc
    )
    skill = xr.Dataset(
        {"rmse": rmse, "acc": acc, **{s: ext.sel(score=s, drop=True) for s in metrics.SCORES}}
    ).transpose("forecaster", "variable", "lead")
    maps = xr.concat(
        [
            metrics.rmse_map(fields[k].sel(lead=headline), obs.sel(lead=headline), mask, SAMPLE)
            for k in FORECASTERS
        ],
        fc,
    ).transpose("forecaster", "variable", "lat", "lon")

    out = _metrics_dict(skill, variables, leads, headline, params, test.sizes[SAMPLE])
    return {
        "metrics": out,
        "skill": skill,
        "error_maps": maps,
        "variables": variables,
        "leads": leads,
    }


def _check_not_empty(test: xr.Dataset) -> None:
    if test.sizes.get(SAMPLE, 0) == 0:
        raise ValueError("the test features store has no samples: check preprocess.split.test")


def _check_quantile(pre: xr.Dataset, params: dict) -> None:
    # The quantile store is computed by preprocess; a different q there would mislabel results.
    q_attr = pre["quantile"].attrs.get("quantile")
    q = params.get("extreme_quantile")
    if q_attr is not None and q is not None and not math.isclose(float(q_attr), float(q)):
        raise ValueError(
            f"evaluate.extreme_quantile={q} but the preprocessed quantile field is the {q_attr} quantile"
        )


def _warn_nonfinite(f_norm: xr.DataArray, mask: xr.DataArray) -> None:
    bad = int((f_norm.isnull() & mask).sum())
    if bad:
        log.warning("%d forecast values at valid points are not finite; they are excluded", bad)


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


def _metrics_dict(
    skill: xr.Dataset, variables: list[str], leads: list[int], headline: int, params: dict, n: int
) -> dict:
    """The JSON-ready metrics (lead keys are strings, as JSON requires; NaN -> null)."""

    def table(name: str) -> dict:
        da = skill[name]
        return {
            k: {
                v: {str(ld): _num(da.sel(forecaster=k, variable=v, lead=ld)) for ld in leads}
                for v in variables
            }
            for k in FORECASTERS
        }

    rmse_h = skill["rmse"].sel(lead=headline)
    beats = {
        v: bool(
            all(
                float(rmse_h.sel(forecaster="model", variable=v))
                < float(rmse_h.sel(forecaster=b, variable=v))
                for b in BASELINES
            )
        )
        for v in variables
    }
    return {
        "headline_lead": headline,
        "extreme_quantile": params.get("extreme_quantile"),
        "variables": variables,
        "leads": leads,
        "forecasters": list(FORECASTERS),
        "n_samples": int(n),
        "rmse": table("rmse"),
        "acc": table("acc"),
        "extremes": {
            k: {
                v: {
                    s: _num(skill[s].sel(forecaster=k, variable=v, lead=headline))
                    for s in metrics.SCORES
                }
                for v in variables
            }
            for k in FORECASTERS
        },
        "beats_baselines": beats,
    }


# ----------------------------------------------------------------------------- outputs


def metrics_table(skill: xr.Dataset) -> pd.DataFrame:
    """Long table: forecaster, variable, lead, rmse, acc, precision, recall, f1."""
    df = skill.to_dataframe().reset_index()
    cols = ["forecaster", "variable", "lead", "rmse", "acc", *metrics.SCORES]
    return (
        df[cols]
        .sort_values(["forecaster", "variable", "lead"], kind="stable")
        .reset_index(drop=True)
    )


def write_outputs(result: dict, out_dir: str | os.PathLike[str], history_csv: Path | None) -> None:
    """Write metrics.json, metrics.csv, skill_vs_lead.png, error_maps.png, loss_curve.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", result["metrics"])
    write_text(out / "metrics.csv", metrics_table(result["skill"]).to_csv(index=False))
    plot_skill(result["skill"], out / "skill_vs_lead.png")
    plot_error_maps(
        result["error_maps"], int(result["metrics"]["headline_lead"]), out / "error_maps.png"
    )
    plot_loss_curve(history_csv, out / "loss_curve.png")
    log.info("wrote metrics and plots to %s", out)


def _figure(width: float, height: float) -> Any:
    # The object API with an explicit Agg canvas: no pyplot global state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


STYLE = {
    "model": {"color": "C0", "marker": "o"},
    "persistence": {"color": "C1", "marker": "s", "linestyle": "--"},
    "climatology": {"color": "C2", "marker": "^", "linestyle": ":"},
}


def plot_skill(skill: xr.Dataset, path: Path) -> None:
    """RMSE (top) and ACC (bottom) against lead, one column per variable."""
    variables = _str_list(skill["variable"].values)
    fig = _figure(4.0 * len(variables), 6.0)
    axes = fig.subplots(2, len(variables), squeeze=False)
    leads = skill["lead"].values
    for j, v in enumerate(variables):
        for i, name in enumerate(("rmse", "acc")):
            ax = axes[i, j]
            for k in _str_list(skill["forecaster"].values):
                ax.plot(
                    leads,
                    skill[name].sel(forecaster=k, variable=v).values,
                    label=k,
                    **STYLE.get(k, {}),
                )
            ax.set_xlabel("lead (steps)")
            ax.set_ylabel("RMSE (physical units)" if name == "rmse" else "ACC")
            ax.set_title(f"{v}: {name.upper()}")
            ax.set_xticks(leads)
            ax.grid(alpha=0.3)
    axes[0, 0].legend()
    _save(fig, path)


def plot_error_maps(maps: xr.DataArray, headline: int, path: Path) -> None:
    """Per-grid-point RMSE at the headline lead: rows variables, columns model and persistence."""
    variables = _str_list(maps["variable"].values)
    shown = ["model", "persistence"]
    fig = _figure(4.5 * len(shown), 2.8 * len(variables))
    axes = fig.subplots(len(variables), len(shown), squeeze=False)
    lon, lat = maps["lon"].values, maps["lat"].values
    for i, v in enumerate(variables):
        vals = maps.sel(variable=v, forecaster=shown).values
        vmax = float(np.nanmax(vals)) if np.isfinite(vals).any() else 1.0
        for j, k in enumerate(shown):
            ax = axes[i, j]
            mesh = ax.pcolormesh(
                lon,
                lat,
                maps.sel(variable=v, forecaster=k).values,
                vmin=0.0,
                vmax=vmax or 1.0,
                shading="auto",
                cmap="viridis",
            )
            ax.set_title(f"{v}: {k} RMSE, lead {headline}")
            ax.set_xlabel("lon")
            ax.set_ylabel("lat")
        fig.colorbar(mesh, ax=list(axes[i]), shrink=0.9)
    _save(fig, path)


def plot_loss_curve(history_csv: Path | None, path: Path) -> None:
    """Train and validation loss per epoch from history.csv (a placeholder if there is none)."""
    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    if history_csv is not None and Path(history_csv).exists():
        hist = pd.read_csv(history_csv)
        for col, style in (("train_loss", "-"), ("val_loss", "--")):
            if col in hist:
                ax.plot(hist["epoch"], hist[col], style, marker=".", label=col.replace("_", " "))
        if "val_loss" in hist and hist["val_loss"].notna().any():
            best = hist.loc[hist["val_loss"].idxmin()]
            ax.axvline(
                best["epoch"], color="grey", alpha=0.5, label=f"best epoch {int(best['epoch'])}"
            )
        if (hist.filter(like="_loss") > 0).all().all():
            ax.set_yscale("log")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (normalised units)")
        ax.legend()
        ax.grid(alpha=0.3)
    else:
        # The plot is a declared output: write one that says why it is empty.
        log.warning("no training history at %s; loss_curve.png is a placeholder", history_csv)
        ax.text(0.5, 0.5, "no training history found", ha="center", va="center")
        ax.set_axis_off()
    ax.set_title("training history")
    _save(fig, path)


# ----------------------------------------------------------------------------- summary


def summarize(
    metrics_paths: Sequence[Path], out_csv: Path, out_png: Path, title: str | None = None
) -> None:
    """Headline RMSE per model, seed and variable with both baselines: a CSV and a bar chart."""
    rows = []
    for p in metrics_paths:
        m = json.loads(Path(p).read_text())
        lead = str(m["headline_lead"])
        for v in m["rmse"]["model"]:
            rows.append(
                {
                    "model": m.get("model"),
                    "seed": m.get("seed"),
                    "variable": v,
                    "headline_lead": int(m["headline_lead"]),
                    **{f"rmse_{k}": m["rmse"][k][v][lead] for k in FORECASTERS},
                    **{f"acc_{k}": m["acc"][k][v][lead] for k in ("model", "persistence")},
                    "f1_model": m.get("extremes", {}).get("model", {}).get(v, {}).get("f1"),
                    "beats_baselines": m["beats_baselines"][v],
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        raise ValueError("summarize: no metrics files given")
    df = df.sort_values(["variable", "model", "seed"], kind="stable").reset_index(drop=True)
    write_text(out_csv, df.to_csv(index=False))
    _plot_summary(df, Path(out_png), title)
    log.info("summary of %d runs -> %s, %s", len(metrics_paths), out_csv, out_png)


def _plot_summary(df: pd.DataFrame, path: Path, title: str | None = None) -> None:
    """One panel per variable: baselines, then each model's mean over seeds (dots: seeds)."""
    variables = list(dict.fromkeys(df["variable"]))
    fig = _figure(max(4.0, 1.2 * (df["model"].nunique() + 2)) * len(variables), 4.0)
    axes = fig.subplots(1, len(variables), squeeze=False)[0]
    for ax, v in zip(axes, variables, strict=True):
        d = df[df["variable"] == v]
        labels = list(BASELINES)
        heights = [d[f"rmse_{b}"].astype(float).mean() for b in BASELINES]
        colors = [STYLE[b]["color"] for b in BASELINES]
        models = list(dict.fromkeys(d["model"]))
        for k, name in enumerate(models):
            r = d.loc[d["model"] == name, "rmse_model"].astype(float)
            labels.append(str(name))
            heights.append(r.mean())
            colors.append(f"C{3 + k}")
        x = np.arange(len(labels))
        ax.bar(x, heights, color=colors, alpha=0.8)
        for k, name in enumerate(models):
            r = d.loc[d["model"] == name, "rmse_model"].astype(float)
            ax.plot(
                np.full(len(r), x[len(BASELINES) + k]), r, "k.", label="seeds" if k == 0 else None
            )
        ax.set_xticks(x, labels, rotation=20)
        ax.set_ylabel("RMSE (physical units)")
        ax.set_title(f"{v}: headline RMSE (lead {int(d['headline_lead'].iloc[0])})")
        ax.grid(axis="y", alpha=0.3)
        if models:
            ax.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)
