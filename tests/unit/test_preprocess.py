from __future__ import annotations

import dask
import numpy as np
import xarray as xr
from testdata import PREPROCESS_PARAMS, make_raw

from hpcpipe.contracts import check_preprocessed, check_thresholds
from hpcpipe.preprocess import preprocess
from hpcpipe.thresholds import thresholds


def params(split: dict, **kw) -> dict:
    monthly = {"climatology": "month", "climatology_window": 1}
    return {**PREPROCESS_PARAMS, **monthly, "split": split, **kw}


def reference(raw: xr.Dataset, split: dict, coarsen: int = 1) -> xr.DataArray:
    """The same computation in plain in-memory xarray."""
    x = raw[["t2m", "z500"]].to_array("variable").transpose("time", "variable", "lat", "lon").load()
    if coarsen > 1:
        x = x.coarsen(lat=coarsen, lon=coarsen).mean()
    train = x.sel(time=slice(*split["train"]))
    clim = train.groupby("time.month").mean()
    anom = x.groupby("time.month") - clim
    a_train = anom.sel(time=slice(*split["train"]))
    mean = a_train.mean(("time", "lat", "lon"))
    std = a_train.std(("time", "lat", "lon"))
    return ((anom - mean) / std).drop_vars("month")


def test_matches_in_memory_xarray(raw: xr.Dataset, split: dict):
    out, stats = preprocess(raw.chunk(time=100), params(split))
    check_preprocessed(out)
    ref = reference(raw, split)
    xr.testing.assert_allclose(
        out["anomaly"].drop_vars("split").load().astype("float64"),
        ref.astype("float64").transpose(*out["anomaly"].dims),
        atol=1e-4,
    )
    assert list(out["split"].values[:2]) == ["train", "train"] and stats["counts"]["val"] == 90
    assert abs(stats["variables"]["z500"]["std"] - float(out["std"][1])) < 1e-9


def test_coarsen_and_masked_points(split: dict):
    raw = make_raw()
    raw["t2m"][:, :2, :2] = np.nan
    out, _ = preprocess(raw.chunk(time=64), params(split, coarsen=2))
    assert out.sizes["lat"] == 4 and out.sizes["lon"] == 8
    # a 2x2 block that is fully masked stays masked; the rest has values
    assert np.isnan(out["anomaly"].sel(variable="t2m").values[:, 0, 0]).all()
    assert np.isfinite(out["anomaly"].sel(variable="t2m").values[:, 1:, 1:]).all()
    xr.testing.assert_allclose(
        out["anomaly"].drop_vars("split").load(),
        reference(raw, split, coarsen=2).transpose(*out["anomaly"].dims).astype("float32"),
        atol=1e-4,
    )


def test_bit_identical_across_chunking_and_workers(raw: xr.Dataset, split: dict, monkeypatch):
    from hpcpipe import chunking

    # small canonical blocks so that the reductions really run over several blocks
    monkeypatch.setattr(chunking, "time_chunk_length", lambda n, step_bytes: 100)
    p = params(split, climatology="dayofyear", climatology_window=31)
    with dask.config.set(scheduler="threads", num_workers=2):
        a = preprocess(raw.chunk(time=30), p)[0].load()
    with dask.config.set(scheduler="synchronous"):
        b = preprocess(raw.chunk(time=548), p)[0].load()
    with dask.config.set(scheduler="threads", num_workers=1):
        c = preprocess(raw.chunk(time=7), p)[0].load()
    xr.testing.assert_identical(a, b)
    xr.testing.assert_identical(a, c)


def test_dayofyear_climatology_covers_every_day_with_cftime(split: dict):
    raw = make_raw(calendar="360_day", n_days=540)
    out, _ = preprocess(raw, params(split, climatology="dayofyear", climatology_window=15))
    assert out.sizes["period"] == 360 and np.isfinite(out["climatology"].values).all()


def test_thresholds_are_training_quantiles(raw: xr.Dataset, split: dict):
    out, _ = preprocess(raw, params(split))
    ds = thresholds(out, {"extreme_quantile": 0.9})
    check_thresholds(ds)
    q = ds["quantile"].load()
    train = out["anomaly"].sel(time=slice(*split["train"])).load()
    xr.testing.assert_allclose(
        q, train.quantile(0.9, dim="time").drop_vars("quantile").astype("float32"), rtol=1e-5
    )
