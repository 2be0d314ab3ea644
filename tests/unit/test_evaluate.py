"""hpcpipe.evaluate (scoring, step, summary) on small synthetic stores that follow the contracts."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hpcpipe.evaluate import scoring, step, summary

VARIABLES = ["t2m", "z500"]
LEADS = [1, 2]
LAT = np.array([-60.0, -20.0, 20.0, 60.0])
LON = np.arange(0.0, 360.0, 45.0)
N_TIME, N_TRAIN, N_VAL = 60, 40, 5
MEAN = np.array([0.1, -0.2])
STD = np.array([2.0, 50.0])
PARAMS = {"headline_lead": 1, "extreme_quantile": 0.9, "variables": VARIABLES}


def period_number(t: Any, kind: str) -> int:
    """Day of year or month of one datetime (pandas Timestamp or cftime), independently of xarray."""
    if kind == "month":
        return int(t.month)
    return int(t.dayofyr) if hasattr(t, "dayofyr") else int(t.day_of_year)


def make_stores(tmp_path: Path, calendar: str, kind: str = "dayofyear") -> dict[str, Any]:
    """Write preprocessed.zarr and features/test.zarr (lags [0], leads [1, 2]); return the raw arrays."""
    rng = np.random.default_rng(7)
    if calendar == "datetime64":
        times = pd.date_range("2001-12-01", periods=N_TIME, freq="D")
    else:
        times = xr.date_range(
            "2001-12-01", periods=N_TIME, freq="D", calendar=calendar, use_cftime=True
        )
    nv, ny, nx = len(VARIABLES), len(LAT), len(LON)
    anom = rng.normal(size=(N_TIME, nv, ny, nx)).astype(np.float32)
    anom[:, 0, 0, :2] = np.nan  # masked points (constant in time) in t2m
    periods = np.arange(1, 13) if kind == "month" else np.arange(1, 367)
    base = np.array([280.0, 5500.0])[None, :, None, None]
    clim = (
        base
        + 10.0 * np.sin(2 * np.pi * periods / len(periods))[:, None, None, None]
        + np.cos(np.deg2rad(LAT))[None, None, :, None] * np.array([5.0, 80.0])[None, :, None, None]
    ).astype(np.float32) * np.ones((1, 1, 1, nx), np.float32)
    split = ["train"] * N_TRAIN + ["val"] * N_VAL + ["test"] * (N_TIME - N_TRAIN - N_VAL)
    space = {"variable": VARIABLES, "lat": LAT, "lon": LON}
    anomaly = xr.DataArray(
        anom, dims=("time", "variable", "lat", "lon"), coords={"time": times, **space}
    )
    with warnings.catch_warnings():  # all-NaN at the masked points, as intended
        warnings.simplefilter("ignore", RuntimeWarning)
        quantile = (
            anomaly.isel(time=slice(0, N_TRAIN)).quantile(0.9, dim="time").drop_vars("quantile")
        )
    pre = xr.Dataset(
        {
            "anomaly": anomaly,
            "climatology": xr.DataArray(
                clim, dims=("period", "variable", "lat", "lon"), coords=space
            ),
            "quantile": quantile.astype(np.float32),
            "mean": ("variable", MEAN),
            "std": ("variable", STD),
        },
        coords={"period": periods, "split": ("time", split)},
    )
    pre["period"].attrs["kind"] = kind
    pre.to_zarr(tmp_path / "preprocessed.zarr", zarr_format=2, consolidated=True)

    inits = np.arange(N_TRAIN + N_VAL, N_TIME - max(LEADS))
    valid = inits[:, None] + np.array(LEADS)[None, :]
    filled = np.nan_to_num(anom)
    test = xr.Dataset(
        {
            "inputs": (("sample", "channel", "lat", "lon"), filled[inits]),
            "targets": (("sample", "lead", "variable", "lat", "lon"), filled[valid]),
            "mask": (("variable", "lat", "lon"), ~np.isnan(anom).any(axis=0)),
        },
        coords={
            "sample": np.arange(len(inits)),
            "time": ("sample", times[inits]),
            "valid_time": (("sample", "lead"), np.asarray(times)[valid]),
            "lead": LEADS,
            "channel": [f"{v}_lag0" for v in VARIABLES],
            **space,
        },
    )
    test.to_zarr(tmp_path / "test.zarr", zarr_format=2, consolidated=True)
    return {
        "anom": anom,
        "clim": clim,
        "inits": inits,
        "valid": valid,
        "periods": periods,
        "period": np.array([period_number(t, kind) for t in times]),
    }


def open_both(tmp_path: Path) -> tuple[xr.Dataset, xr.Dataset]:
    return xr.open_zarr(tmp_path / "test.zarr"), xr.open_zarr(tmp_path / "preprocessed.zarr")


def perfect(test: xr.Dataset) -> xr.DataArray:
    return test["targets"].load()


def np_weighted_rmse(f: np.ndarray, o: np.ndarray, mask: np.ndarray) -> float:
    """WB2 RMSE of (time, lat, lon) arrays by hand."""
    c = np.cos(np.deg2rad(LAT))
    w = (c / c.mean())[:, None] * mask
    mse_t = ((f - o) ** 2 * w).sum(axis=(1, 2)) / w.sum()
    return float(np.sqrt(mse_t.mean()))


def hand_baselines(raw: dict[str, Any]) -> dict[tuple[str, str, int], float]:
    """Persistence and climatology RMSE in physical units, straight from the raw arrays."""
    anom, clim, inits, valid = raw["anom"], raw["clim"], raw["inits"], raw["valid"]
    idx = {p: i for i, p in enumerate(raw["periods"])}
    c_of = np.array([idx[p] for p in raw["period"]])  # time index -> climatology row
    out = {}
    for v in range(len(VARIABLES)):
        mask = ~np.isnan(anom[:, v]).any(axis=0)
        for j, lead in enumerate(LEADS):
            tv = valid[:, j]
            obs = np.nan_to_num(anom[tv, v]) * STD[v] + MEAN[v] + clim[c_of[tv], v]
            pers = np.nan_to_num(anom[inits, v]) * STD[v] + MEAN[v] + clim[c_of[inits], v]
            out["persistence", VARIABLES[v], lead] = np_weighted_rmse(pers, obs, mask)
            out["climatology", VARIABLES[v], lead] = np_weighted_rmse(clim[c_of[tv], v], obs, mask)
    return out


@pytest.mark.parametrize(
    ("calendar", "kind"),
    [("datetime64", "dayofyear"), ("noleap", "dayofyear"), ("noleap", "month")],
)
def test_perfect_forecast_and_hand_baselines(tmp_path: Path, calendar: str, kind: str) -> None:
    raw = make_stores(tmp_path, calendar, kind)
    test, pre = open_both(tmp_path)
    if calendar == "noleap":
        assert "cftime" in type(test["time"].values[0]).__module__
    else:
        assert np.issubdtype(test["time"].dtype, np.datetime64)
    res = scoring.evaluate_forecasts(perfect(test), test, pre, PARAMS)
    m = res["metrics"]
    hand = hand_baselines(raw)
    for v in VARIABLES:
        for lead in LEADS:
            assert m["rmse"]["model"][v][str(lead)] == pytest.approx(0.0, abs=1e-9)
            assert m["acc"]["model"][v][str(lead)] == pytest.approx(1.0)
            assert m["acc"]["climatology"][v][str(lead)] == 0.0
            for b in ("persistence", "climatology"):
                assert m["rmse"][b][v][str(lead)] == pytest.approx(hand[b, v, lead], rel=1e-6)
                assert m["rmse"][b][v][str(lead)] > 0.1
        assert m["beats_baselines"][v] is True
        assert m["extremes"]["model"][v] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert m["n_samples"] == len(raw["inits"])
    assert m["headline_lead"] == 1


def test_bad_forecast_does_not_beat_baselines(tmp_path: Path) -> None:
    make_stores(tmp_path, "datetime64")
    test, pre = open_both(tmp_path)
    res = scoring.evaluate_forecasts(perfect(test) + 5.0, test, pre, PARAMS)
    assert res["metrics"]["beats_baselines"] == {"t2m": False, "z500": False}
    # A uniform error of 5 normalised units is 5*std in physical units.
    assert res["metrics"]["rmse"]["model"]["z500"]["1"] == pytest.approx(5.0 * STD[1])


def test_headline_lead_must_be_a_lead(tmp_path: Path) -> None:
    make_stores(tmp_path, "datetime64")
    test, pre = open_both(tmp_path)
    with pytest.raises(ValueError, match="headline_lead"):
        scoring.evaluate_forecasts(perfect(test), test, pre, {**PARAMS, "headline_lead": 7})


def write_history(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [1.0, 0.6, 0.5],
            "val_loss": [1.1, 0.7, 0.8],
            "lr": 1e-3,
            "seconds": 1.0,
        }
    ).to_csv(path, index=False)


def output_paths(out: Path) -> dict[str, Path]:
    """The five declared outputs under ``out``, named as the workflow rule names them."""
    names = ("metrics.json", "metrics.csv", "skill_vs_lead.png", "error_maps.png", "loss_curve.png")
    return dict(zip(step.OUTPUTS, (out / n for n in names), strict=True))


def check_outputs(out: Path) -> dict:
    for name in ("skill_vs_lead.png", "error_maps.png", "loss_curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    m = json.loads((out / "metrics.json").read_text())
    for key in (
        "model",
        "seed",
        "headline_lead",
        "rmse",
        "acc",
        "extremes",
        "beats_baselines",
        "n_samples",
    ):
        assert key in m, key
    assert set(m["rmse"]) == {"model", "persistence", "climatology"}
    assert set(m["extremes"]["model"]["t2m"]) == {"precision", "recall", "f1"}
    df = pd.read_csv(out / "metrics.csv")
    assert list(df.columns) == [
        "forecaster",
        "variable",
        "lead",
        "rmse",
        "acc",
        "precision",
        "recall",
        "f1",
    ]
    assert len(df) == 3 * len(VARIABLES) * len(LEADS)
    return m


def test_outputs_written(tmp_path: Path) -> None:
    make_stores(tmp_path, "noleap")
    test, pre = open_both(tmp_path)
    res = scoring.evaluate_forecasts(perfect(test), test, pre, PARAMS)
    res["metrics"] = {"model": "cnn", "seed": 0, **res["metrics"]}
    write_history(tmp_path / "history.csv")
    out = tmp_path / "eval" / "cnn" / "0"
    step.write_outputs(res, output_paths(out), history_csv=tmp_path / "history.csv")
    m = check_outputs(out)
    assert m["model"] == "cnn" and m["seed"] == 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_evaluate_end_to_end_with_a_persistence_model(tmp_path: Path) -> None:
    """evaluate() on a forecast store whose 'model' repeats the lag-0 input (anomaly persistence)."""
    from hpcpipe import forecasts

    make_stores(tmp_path, "datetime64")
    test, pre = (scoring.as_str_coord(ds) for ds in open_both(tmp_path))
    pred = np.repeat(test["inputs"].values[:, None], len(LEADS), axis=1)
    units = {v: "1" for v in VARIABLES}
    td = forecasts.axis_timedeltas(LEADS, pre.indexes["time"], "pre")
    store = tmp_path / "forecasts" / "persist" / "3.zarr"
    tmpl = forecasts.template(test, VARIABLES, units, td, {"model": "persist", "seed": 3}, 100)
    norm = scoring.normalisation(pre, VARIABLES)
    forecasts.write(tmpl, store, [forecasts.block(pred, test, norm, VARIABLES)])
    stats = {"variables": {v: {"units": "1"} for v in VARIABLES}}
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    write_history(tmp_path / "history.csv")
    out = tmp_path / "eval"
    thr = xr.open_zarr(tmp_path / "preprocessed.zarr")[["quantile"]].load()
    thr.attrs["extreme_quantile"] = 0.9
    thr.to_zarr(tmp_path / "thresholds.zarr", zarr_format=2)
    m = step.evaluate(
        store,
        tmp_path / "history.csv",
        tmp_path / "test.zarr",
        tmp_path / "preprocessed.zarr",
        tmp_path / "thresholds.zarr",
        tmp_path / "stats.json",
        output_paths(out),
        PARAMS,
    )
    assert check_outputs(out) == m
    assert (m["model"], m["seed"]) == ("persist", 3)
    for v in VARIABLES:
        # The same normalised anomaly as persistence: identical extremes scores.
        assert m["extremes"]["model"][v] == m["extremes"]["persistence"][v]
        for lead in LEADS:
            # Anomaly persistence (C of the valid time) vs state persistence (C of the initial
            # time): close, since the synthetic climatology changes slowly, but not equal.
            got, pers = m["rmse"]["model"][v][str(lead)], m["rmse"]["persistence"][v][str(lead)]
            assert got == pytest.approx(pers, rel=0.05)


def test_summarize(tmp_path: Path) -> None:
    make_stores(tmp_path, "datetime64")
    test, pre = open_both(tmp_path)
    paths = []
    for model, seed, err in (("cnn", 0, 0.0), ("cnn", 1, 0.1), ("unet", 0, 0.2)):
        res = scoring.evaluate_forecasts(perfect(test) + err, test, pre, PARAMS)
        p = tmp_path / model / str(seed) / "metrics.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({"model": model, "seed": seed, **res["metrics"]}))
        paths.append(p)
    summary.summarize(paths, tmp_path / "summary.csv", tmp_path / "summary.png")
    df = pd.read_csv(tmp_path / "summary.csv")
    assert len(df) == 3 * len(VARIABLES)
    assert {
        "model",
        "seed",
        "variable",
        "rmse_model",
        "rmse_persistence",
        "rmse_climatology",
    } <= set(df.columns)
    row = df[(df["model"] == "unet") & (df["variable"] == "z500")].iloc[0]
    assert row["rmse_model"] == pytest.approx(0.2 * STD[1])
    assert (tmp_path / "summary.png").read_bytes()[:4] == b"\x89PNG"


def test_outputs_must_be_exactly_the_declared_ones(tmp_path: Path) -> None:
    paths = output_paths(tmp_path)
    with pytest.raises(ValueError, match=r"missing \['loss'\], unknown \['plot'\]"):
        step.output_paths({**{k: p for k, p in paths.items() if k != "loss"}, "plot": "x.png"})
    assert step.output_paths(paths) == paths
