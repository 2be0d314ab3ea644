"""Stored forecasts (hpcpipe.forecasts, hpcpipe.predict), scoring them, external forecasts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from test_evaluate import LEADS, PARAMS, STD, VARIABLES, make_stores, output_paths, write_history

from hpcpipe import forecasts
from hpcpipe.evaluate import scoring, step, summary
from hpcpipe.models.files import load_model, model_file, predict
from hpcpipe.models.nets import build_model
from hpcpipe.predict import predict_store

UNITS = {"t2m": "K", "z500": "m"}
EPS32 = float(np.finfo(np.float32).eps)
CNN = {"channels": 4, "layers": 2, "kernel_size": 3}


def stores(tmp_path: Path) -> tuple[xr.Dataset, xr.Dataset]:
    """features/test.zarr (chunked in 3 along sample), preprocessed.zarr, thresholds.zarr and
    stats.json of test_evaluate's synthetic data."""
    make_stores(tmp_path, "datetime64")
    test = xr.open_zarr(tmp_path / "test.zarr").load()
    for var in test.variables.values():
        var.encoding = {}
    (tmp_path / "test.zarr").rename(tmp_path / "test-whole.zarr")
    test.chunk({"sample": 3}).to_zarr(tmp_path / "test.zarr", zarr_format=2, consolidated=True)
    pre = xr.open_zarr(tmp_path / "preprocessed.zarr")
    thr = pre[["quantile"]].load()
    thr.attrs["extreme_quantile"] = 0.9
    thr.to_zarr(tmp_path / "thresholds.zarr", zarr_format=2)
    stats = {v: {"mean": 0.0, "std": 1.0, "units": UNITS[v]} for v in VARIABLES}
    (tmp_path / "stats.json").write_text(json.dumps({"variables": stats}))
    return xr.open_zarr(tmp_path / "test.zarr"), pre


def save_model(path: Path, seed: int = 0) -> torch.nn.Module:
    """A real (untrained) CNN for the synthetic grid, saved as train saves model.pt."""
    torch.manual_seed(seed)
    model = build_model("cnn", CNN, len(VARIABLES), len(LEADS) * len(VARIABLES), (4, 8))
    meta = {"in_channels": len(VARIABLES), "variables": VARIABLES, "leads": LEADS,
            "grid": [4, 8], "periodic": True, "val_loss": 0.25, "seed": seed, "epoch": 2}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model_file(model, "cnn", CNN, meta), path)
    return model


def write_layout(path: Path, pred_norm: np.ndarray, test: xr.Dataset, pre: xr.Dataset) -> None:
    """Normalised-anomaly forecasts (sample, lead, variable, lat, lon) as a forecast store."""
    test = scoring.as_str_coord(test)
    norm = scoring.normalisation(scoring.as_str_coord(pre), VARIABLES)
    td = forecasts.axis_timedeltas(LEADS, pre.indexes["time"], "pre")
    tmpl = forecasts.template(test, VARIABLES, UNITS, td, {"model": "other"}, test.sizes["sample"])
    forecasts.write(tmpl, path, [forecasts.block(pred_norm, test, norm, VARIABLES)])


def evaluate(tmp_path: Path, store: Path, external: dict | None = None) -> dict:
    write_history(tmp_path / "history.csv")
    return step.evaluate(
        store, tmp_path / "history.csv", tmp_path / "test.zarr", tmp_path / "preprocessed.zarr",
        tmp_path / "thresholds.zarr", tmp_path / "stats.json", output_paths(tmp_path / "eval"),
        PARAMS, external=external,
    )  # fmt: skip


def assert_same_scores(got: dict, want: dict, x_max: dict[str, float], k: str = "model") -> None:
    """Equal up to the float32 rounding of the stored physical values.

    Each stored value is within d = eps32/2 * max|x| of the float64 one. RMSE is a weighted
    root mean square (weights of mean 1), so it moves by at most d; ACC (a correlation of
    anomalies of size ~std) by at most about 2 d / std. Twice those bounds.
    """
    for v in VARIABLES:
        d = EPS32 / 2 * x_max[v]
        for lead in map(str, LEADS):
            assert got["rmse"][k][v][lead] == pytest.approx(
                want["rmse"]["model"][v][lead], abs=2 * d
            )
            assert got["acc"][k][v][lead] == pytest.approx(
                want["acc"]["model"][v][lead], abs=4 * d / STD[VARIABLES.index(v)]
            )
        assert got["extremes"][k][v] == want["extremes"]["model"][v]


def test_predict_writes_the_layout_and_scores_as_from_memory(tmp_path: Path) -> None:
    test, pre = stores(tmp_path)
    model_path = tmp_path / "models" / "cnn" / "0" / "model.pt"
    save_model(model_path)
    out = tmp_path / "forecasts" / "cnn" / "0.zarr"
    predict_store(model_path, tmp_path / "test.zarr", tmp_path / "preprocessed.zarr",
                  tmp_path / "stats.json", out, {"variables": VARIABLES, "batch_size": 2})  # fmt: skip
    ds = xr.open_zarr(out)
    assert tuple(ds[VARIABLES[0]].dims) == forecasts.DIMS
    assert ds["prediction_timedelta"].values.tolist() == [np.timedelta64(ld, "D").astype(
        "timedelta64[ns]").tolist() for ld in LEADS]  # fmt: skip
    assert {v: ds[v].attrs["units"] for v in VARIABLES} == UNITS
    assert ds["latitude"].attrs["units"] == "degrees_north"
    assert ds.attrs["Conventions"].startswith("CF-") and ds.attrs["val_loss"] == 0.25
    assert "results" not in ds.attrs["inputs"] and str(model_path) in ds.attrs["inputs"]
    assert ds.chunks["time"][0] == 3  # written chunk by chunk, as the inputs are stored

    # Today's path: the model's predictions in memory, scored directly.
    model, _ = load_model(model_path)
    pred = predict(model, test["inputs"].values, 64)
    pred_da = xr.DataArray(pred, dims=test["targets"].dims, coords=test["targets"].coords)
    want = scoring.evaluate_forecasts(pred_da, test, pre, PARAMS)["metrics"]
    got = evaluate(tmp_path, out)
    assert (got["model"], got["seed"], got["val_loss"]) == ("cnn", 0, 0.25)
    assert got["forecasters"] == list(scoring.FORECASTERS)
    x_max = {v: float(np.nanmax(np.abs(ds[v].values))) for v in VARIABLES}
    assert_same_scores(got, want, x_max)
    for b in scoring.BASELINES:  # the baselines do not go through a store: identical
        assert got["rmse"][b] == want["rmse"][b]


def persistence_norm(test: xr.Dataset, pre: xr.Dataset) -> np.ndarray:
    """Persistence of the physical state, as normalised anomalies at the valid time."""
    test, pre = scoring.as_str_coord(test), scoring.as_str_coord(pre)
    norm = scoring.normalisation(pre, VARIABLES)
    a0 = pre["anomaly"].sel(time=test["time"]).astype(np.float64).reset_coords(drop=True)
    x0 = scoring.to_physical(a0, norm.mean, norm.std, norm.at(test["time"]))
    a = scoring.to_normalised(x0, norm.mean, norm.std, norm.at(test["valid_time"]))
    return a.fillna(0.0).transpose("sample", "lead", "variable", "lat", "lon").values


def test_an_external_store_is_scored_beside_the_baselines(tmp_path: Path) -> None:
    test, pre = stores(tmp_path)
    model = tmp_path / "forecasts" / "model.zarr"
    write_layout(model, test["targets"].values, test, pre)  # a perfect forecast
    other = tmp_path / "elsewhere" / "persist.zarr"
    write_layout(other, persistence_norm(test, pre), test, pre)
    m = evaluate(tmp_path, model, {"persist": other})
    assert m["forecasters"] == [*scoring.FORECASTERS, "persist"]
    assert m["external"] == {"persist": str(other)}
    x_max = {v: float(np.nanmax(np.abs(xr.open_zarr(other)[v].values))) for v in VARIABLES}
    as_model = {s: {"model": m[s]["persistence"]} for s in ("rmse", "acc")}
    assert_same_scores(m, {**as_model, "extremes": {"model": m["extremes"]["persist"]}},
                       x_max, "persist")  # fmt: skip
    assert m["rmse"]["model"]["t2m"]["1"] < 1e-3  # the perfect one
    table = (tmp_path / "eval" / "metrics.csv").read_text()
    assert "persist," in table
    summary.summarize([tmp_path / "eval" / "metrics.json"], tmp_path / "s.csv", tmp_path / "s.png")
    row = pd.read_csv(tmp_path / "s.csv").iloc[0]
    assert row["rmse_persist"] == m["rmse"]["persist"][row["variable"]]["1"]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stores and a perfect forecast store ext.zarr, made once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("layout")
    test, pre = stores(tmp_path)
    write_layout(tmp_path / "ext.zarr", test["targets"].values, test, pre)
    return tmp_path


def layout(tmp_path: Path) -> tuple[xr.Dataset, forecasts.Expected, Path]:
    test = scoring.as_str_coord(xr.open_zarr(tmp_path / "test.zarr"))
    pre = scoring.as_str_coord(xr.open_zarr(tmp_path / "preprocessed.zarr"))
    path = tmp_path / "ext.zarr"
    return xr.open_zarr(path), forecasts.expected(test, pre, VARIABLES, UNITS), path


MISMATCHES = {
    "grid": (lambda ds: ds.assign_coords(latitude=ds["latitude"] + 1.0), r"its latitude"),
    "times": (lambda ds: ds.isel(time=slice(1, None)), r"initialisation times miss 1 of the"),
    "leads": (lambda ds: ds.isel(prediction_timedelta=[0]), r"lacks the leads \['2 days"),
    "variables": (lambda ds: ds.drop_vars("z500"), r"variables \['z500'\] missing"),
    "units": (
        lambda ds: ds.assign(t2m=ds["t2m"].assign_attrs(units="degC")),
        r"'t2m' is in 'degC', the observations in 'K'",
    ),
    "timedelta": (
        lambda ds: ds.assign_coords(prediction_timedelta=[1, 2]),
        r"prediction_timedelta is int64, not timedelta64",
    ),
}


@pytest.mark.parametrize("what", sorted(MISMATCHES))
def test_each_mismatch_is_named(written: Path, what: str) -> None:
    ds, want, path = layout(written)
    forecasts.check_forecast(ds, want, "ext", path)  # as written: fits
    change, message = MISMATCHES[what]
    with pytest.raises(forecasts.ForecastError, match=message) as err:
        forecasts.check_forecast(change(ds), want, "ext", path)
    assert f"'ext' ({path})" in str(err.value)


def test_evaluate_refuses_a_mismatched_external_store_before_writing(written: Path) -> None:
    ds, _, path = layout(written)
    bad = written / "bad.zarr"
    ds.drop_vars("z500").to_zarr(bad, zarr_format=2, consolidated=True)
    with pytest.raises(forecasts.ForecastError, match=r"'other' \(.*bad.zarr\).*'z500'"):
        evaluate(written, path, {"other": bad})
    assert not (written / "eval" / "metrics.json").exists()


def plan_config(**builtin: Any) -> dict:
    return {"dataset": {"source": "builtin", "variables": VARIABLES,
                        "builtin": {"n_lat": 4, "n_lon": 8, **builtin}},
            "preprocess": {"coarsen": 1}, "features": {"leads": LEADS}}  # fmt: skip


def test_plan_time_check_of_the_builtin_grid_units_and_leads(written: Path, tmp_path: Path) -> None:
    from hpcpipe.generate.dataset import latitudes, longitudes

    ds, _, _ = layout(written)
    ds = ds.assign_coords(latitude=latitudes(4), longitude=longitudes(8))
    ds.to_zarr(tmp_path / "ok.zarr", zarr_format=2, consolidated=True)
    ok = {"mine": str(tmp_path / "ok.zarr")}
    assert forecasts.plan_problems(ok, plan_config()) == []
    found = forecasts.plan_problems(ok, plan_config(n_lat=8))
    assert len(found) == 1 and found[0].startswith(f"evaluate.external.mine ({ok['mine']})")
    assert "latitude (4 values" in found[0]
    missing = forecasts.plan_problems({"gone": str(tmp_path / "no.zarr")}, plan_config())
    assert "evaluate.external.gone" in missing[0] and "not found" in missing[0]
