"""hpcpipe.evaluate.metrics against hand-computed numpy on small arrays."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import xarray.testing as xrt

from hpcpipe.evaluate import metrics

LAT = np.array([-60.0, 0.0, 60.0])
LON = np.array([0.0, 90.0, 180.0, 270.0])


def field(values: np.ndarray, lat: np.ndarray = LAT, lon: np.ndarray = LON) -> xr.DataArray:
    """A (time, lat, lon) DataArray with the given values."""
    nt = values.shape[0]
    return xr.DataArray(
        values.astype(np.float64),
        dims=("time", "lat", "lon"),
        coords={"time": np.arange(nt), "lat": lat, "lon": lon},
    )


def np_weights(lat: np.ndarray) -> np.ndarray:
    c = np.cos(np.deg2rad(lat))
    return c / c.mean()


def test_lat_weights_by_hand() -> None:
    w = metrics.lat_weights(xr.DataArray(LAT, dims="lat", coords={"lat": LAT}))
    # cos = [0.5, 1, 0.5], mean 2/3 -> [0.75, 1.5, 0.75]
    np.testing.assert_allclose(w.values, [0.75, 1.5, 0.75])
    assert float(w.sum()) == pytest.approx(len(LAT))
    assert float(w.mean()) == pytest.approx(1.0)


def test_rmse_of_constant_error_is_that_constant() -> None:
    rng = np.random.default_rng(1)
    o = field(rng.normal(size=(5, 3, 4)))
    r = metrics.rmse(o + 2.5, o)
    assert r.dims == ()
    assert float(r) == pytest.approx(2.5)


def test_rmse_ignores_masked_and_nan_points() -> None:
    rng = np.random.default_rng(2)
    o = field(rng.normal(size=(4, 3, 4)))
    f = o + 1.5
    mask = xr.DataArray(np.ones((3, 4), bool), dims=("lat", "lon"), coords={"lat": LAT, "lon": LON})
    mask[0, :2] = False
    f = f.where(mask, 1e6)  # a huge error where masked: must not count
    o = o.copy()
    o[1, 2, 3] = np.nan  # a missing observation: must not count
    assert float(metrics.rmse(f, o, mask)) == pytest.approx(1.5)
    # Without the mask the huge errors count.
    assert float(metrics.rmse(f, o)) > 1e3


def test_rmse_is_sqrt_of_time_mean_weighted_mse_by_hand() -> None:
    rng = np.random.default_rng(3)
    f_np, o_np = rng.normal(size=(2, 6, 3, 4))
    w = np_weights(LAT)[:, None] * np.ones((3, 4))
    mse_t = ((f_np - o_np) ** 2 * w).sum(axis=(1, 2)) / w.sum()
    expected = np.sqrt(mse_t.mean())
    got = metrics.rmse(field(f_np), field(o_np))
    assert float(got) == pytest.approx(expected)
    # WB2 convention: not the time mean of per-step RMSEs.
    assert float(got) != pytest.approx(np.sqrt(mse_t).mean())


def test_metrics_broadcast_over_extra_dims() -> None:
    rng = np.random.default_rng(4)
    o = field(rng.normal(size=(5, 3, 4)))
    f = xr.concat([o + 1.0, o - 3.0], dim=xr.DataArray([1, 2], dims="lead", name="lead"))
    r = metrics.rmse(f, o)
    xrt.assert_allclose(
        r, xr.DataArray([1.0, 3.0], dims="lead", coords={"lead": [1, 2]}, name="rmse")
    )


def test_acc_perfect_is_one_and_sign_flipped_is_minus_one() -> None:
    rng = np.random.default_rng(5)
    clim = field(rng.normal(size=(1, 3, 4))).isel(time=0, drop=True) + 280.0
    o = clim + field(rng.normal(size=(6, 3, 4)))
    assert float(metrics.acc(o, o, clim)) == pytest.approx(1.0)
    flipped = clim - (o - clim)
    assert float(metrics.acc(flipped, o, clim)) == pytest.approx(-1.0)
    # A forecast of the climatology has zero anomaly: 0/0 -> NaN (callers define it as 0).
    assert np.isnan(float(metrics.acc(clim.broadcast_like(o), o, clim)))


def test_acc_cos_weighted_by_hand() -> None:
    lat = np.array([0.0, 60.0])  # cos = [1, 0.5]
    lon = np.array([0.0, 180.0])
    clim = xr.DataArray(np.zeros((2, 2)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    fa = np.array([[[1.0, 2.0], [0.0, -1.0]], [[1.0, 0.0], [1.0, 1.0]]])
    oa = np.array([[[1.0, 1.0], [1.0, -2.0]], [[-1.0, 0.0], [1.0, 2.0]]])
    w = np.array([1.0, 0.5]) / 0.75  # normalisation cancels in ACC
    per_t = []
    for t in range(2):
        wf = w[:, None] * np.ones((2, 2))
        num = (wf * fa[t] * oa[t]).sum()
        den = np.sqrt((wf * fa[t] ** 2).sum() * (wf * oa[t] ** 2).sum())
        per_t.append(num / den)
    # By hand for t=0 with unnormalised weights [1, 0.5] (the normalisation cancels):
    # num = 1*(1*1 + 2*1) + 0.5*(0*1 + 1*2) = 4; sum w f^2 = 5 + 0.5; sum w o^2 = 2 + 2.5.
    assert per_t[0] == pytest.approx((3 + 1.0) / np.sqrt((5 + 0.5) * (2 + 2.5)))
    got = metrics.acc(field(fa, lat, lon), field(oa, lat, lon), clim)
    assert float(got) == pytest.approx(np.mean(per_t))


def test_acc_does_not_remove_the_spatial_mean() -> None:
    # Anomalies with the same pattern plus a uniform offset: a centred correlation would be 1.
    rng = np.random.default_rng(6)
    clim = xr.zeros_like(field(np.zeros((1, 3, 4))).isel(time=0, drop=True))
    o = field(rng.normal(size=(3, 3, 4)))
    assert float(metrics.acc(o + 5.0, o, clim)) < 0.9


def test_rmse_map_by_hand() -> None:
    f_np = np.zeros((3, 3, 4))
    o_np = np.zeros((3, 3, 4))
    f_np[:, 0, 0] = [1.0, 2.0, 2.0]
    o_np[1, 1, 1] = np.nan
    f_np[:, 1, 1] = [3.0, 100.0, 4.0]  # the NaN step is skipped: sqrt((9 + 16) / 2)
    m = metrics.rmse_map(field(f_np), field(o_np))
    assert m.dims == ("lat", "lon")
    assert float(m[0, 0]) == pytest.approx(np.sqrt(9 / 3))
    assert float(m[1, 1]) == pytest.approx(np.sqrt(25 / 2))
    assert float(m[2, 3]) == 0.0


def test_extreme_scores_tiny_example() -> None:
    lat, lon = np.array([0.0]), np.array([0.0, 1.0, 2.0, 3.0])
    thr = xr.DataArray(np.ones((1, 4)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    # events (> 1): obs at (t0,l0), (t0,l1), (t1,l2); forecast at (t0,l0), (t1,l2), (t1,l3).
    o = field(np.array([[[2.0, 3.0, 0.0, 0.0]], [[0.0, 1.0, 5.0, 0.0]]]), lat, lon)
    f = field(np.array([[[1.5, 0.0, 0.0, 0.0]], [[0.0, 0.0, 2.0, 9.0]]]), lat, lon)
    counts = metrics.extreme_counts(f, o, thr)
    assert counts.sel(count=["tp", "fp", "fn", "tn"]).values.tolist() == [2, 1, 1, 4]
    s = metrics.extreme_scores(f, o, thr)
    np.testing.assert_allclose(
        s.sel(score=["precision", "recall", "f1"]).values, [2 / 3, 2 / 3, 2 / 3]
    )
    # Masking lon 3 removes the false alarm; value 1.0 equals the threshold: not an event.
    mask = xr.DataArray(
        [[True, True, True, False]], dims=("lat", "lon"), coords={"lat": lat, "lon": lon}
    )
    s = metrics.extreme_scores(f, o, thr, mask)
    np.testing.assert_allclose(s.values, [1.0, 2 / 3, 2 * 2 / (2 * 2 + 1)])


def test_extreme_scores_zero_over_zero_is_nan() -> None:
    lat, lon = np.array([0.0]), np.array([0.0, 1.0])
    thr = xr.DataArray(np.ones((1, 2)), dims=("lat", "lon"), coords={"lat": lat, "lon": lon})
    quiet = field(np.zeros((2, 1, 2)), lat, lon)
    events = field(np.full((2, 1, 2), 3.0), lat, lon)
    # No forecast events, observed events: precision 0/0 = NaN, recall 0, F1 0.
    s = metrics.extreme_scores(quiet, events, thr)
    assert np.isnan(float(s.sel(score="precision")))
    assert float(s.sel(score="recall")) == 0.0
    assert float(s.sel(score="f1")) == 0.0
    # No events at all: everything 0/0.
    assert np.isnan(metrics.extreme_scores(quiet, quiet, thr).values).all()
