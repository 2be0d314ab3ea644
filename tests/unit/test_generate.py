"""Tests of the built-in synthetic dataset (hpcpipe.generate)."""

from __future__ import annotations

import math
from typing import Any

import dask
import numpy as np
import pytest
import xarray as xr
import xarray.testing as xrt

from hpcpipe.chunking import generated_chunk_days
from hpcpipe.contracts import check_raw
from hpcpipe.generate import dataset as g
from hpcpipe.generate import spectral as sp
from hpcpipe.generate.fields import FIELDS

PARAMS: dict[str, Any] = {
    "seed": 42,
    "start": "2000-01-01",
    "n_days": 1096,
    "n_lat": 32,
    "n_lon": 64,
}


def _params(**overrides: Any) -> dict[str, Any]:
    return {**PARAMS, **overrides}


def _anomaly(ds: xr.Dataset, name: str) -> np.ndarray:
    """Anomaly in model units (z500 has unit variance): (x - base - season) / scale."""
    mean = g.mean_state(name, ds.lat.values, ds.time.values)[:, :, None]
    return (ds[name].values.astype(np.float64) - mean) / sp.spectral_model(
        ds.sizes["lat"], ds.sizes["lon"]
    ).scale[name]


@pytest.fixture(scope="module")
def two_years() -> xr.Dataset:
    """730 days on the default grid, computed once for the statistical tests."""
    return g.generate_dataset(_params(n_days=730), ["t2m", "z500"]).compute()


def test_structure_coords_attrs_dtypes() -> None:
    ds = g.generate_dataset(_params(n_days=40, n_lat=8, n_lon=16), ["z500", "t2m"])
    assert list(ds.data_vars) == ["z500", "t2m"]
    assert dict(ds.sizes) == {"time": 40, "lat": 8, "lon": 16}
    assert ds.attrs["source"] == "hpcpipe builtin"
    assert ds.attrs["seed"] == 42
    assert ds.time.dtype == np.dtype("datetime64[ns]")
    assert ds.time.values[0] == np.datetime64("2000-01-01")
    assert np.all(np.diff(ds.time.values) == np.timedelta64(1, "D"))
    np.testing.assert_allclose(ds.lat.values, np.arange(-78.75, 90, 22.5))
    np.testing.assert_allclose(ds.lon.values, np.arange(0, 360, 22.5))
    check_raw(ds)  # dims (time, lat, lon), float32, coordinates ascending, regular time
    units = {"t2m": "K", "z500": "m"}
    for name, da in ds.data_vars.items():
        assert isinstance(da.data, dask.array.Array)  # lazy
        assert da.attrs["units"] == units[name]
        assert da.attrs["long_name"]
    values = ds.compute()
    assert np.isfinite(values.t2m).all() and np.isfinite(values.z500).all()
    assert float(values.t2m.min()) > 200 and float(values.t2m.max()) < 330
    assert float(values.z500.min()) > 4800 and float(values.z500.max()) < 6000


def test_graph_is_one_task_per_chunk() -> None:
    ds = g.generate_dataset(_params(n_days=100), ["t2m", "z500"], chunk_days=10)
    assert ds.t2m.data.chunks[0] == (10,) * 10
    # one generation task per chunk, plus one cheap selection per variable and chunk
    assert len(ds.__dask_graph__()) <= 3 * 10


def test_same_seed_same_data_other_seed_differs() -> None:
    p = _params(n_days=60, n_lat=16, n_lon=32)
    a = g.generate_dataset(p, ["t2m", "z500"]).compute()
    b = g.generate_dataset(dict(p), ["t2m", "z500"]).compute()
    xrt.assert_identical(a, b)
    c = g.generate_dataset({**p, "seed": 43}, ["t2m", "z500"]).compute()
    assert c.attrs["seed"] == 43
    for name in ("t2m", "z500"):
        assert not np.array_equal(a[name].values, c[name].values)


@pytest.fixture(scope="module")
def reference_150() -> xr.Dataset:
    with dask.config.set(scheduler="synchronous"):
        return g.generate_dataset(_params(n_days=150), ["t2m", "z500"]).compute()


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
@pytest.mark.parametrize("chunk_days", [7, 100, None])
def test_chunking_and_scheduler_do_not_change_values(
    reference_150: xr.Dataset, chunk_days: int | None, scheduler: str
) -> None:
    ds = g.generate_dataset(_params(n_days=150), ["t2m", "z500"], chunk_days=chunk_days)
    if chunk_days is not None:
        assert ds.t2m.data.chunks[0][0] == chunk_days
    with dask.config.set(scheduler=scheduler):
        got = ds.compute()
    xrt.assert_identical(got, reference_150)
    for name in ("t2m", "z500"):  # bitwise, not just equal up to tolerance
        assert got[name].values.tobytes() == reference_150[name].values.tobytes()


def test_shorter_series_is_a_prefix_and_a_later_start_a_slice(reference_150: xr.Dataset) -> None:
    short = g.generate_dataset(_params(n_days=37), ["t2m", "z500"], chunk_days=5).compute()
    xrt.assert_identical(short, reference_150.isel(time=slice(0, 37)))
    # values are keyed on the calendar day, so any sub-range is a slice of the full series
    later = g.generate_dataset(_params(start="2000-02-15", n_days=50), ["t2m", "z500"]).compute()
    xrt.assert_identical(later, reference_150.sel(time=slice("2000-02-15", "2000-04-04")))


def test_variable_subset_and_order_do_not_change_values(reference_150: xr.Dataset) -> None:
    t_only = g.generate_dataset(_params(n_days=150), ["t2m"], chunk_days=64).compute()
    xrt.assert_identical(t_only.t2m, reference_150.t2m)
    swapped = g.generate_dataset(_params(n_days=150), ["z500", "t2m"]).compute()
    assert list(swapped.data_vars) == ["z500", "t2m"]
    xrt.assert_identical(swapped[["t2m", "z500"]], reference_150)


def test_unknown_variable_is_named() -> None:
    with pytest.raises(ValueError, match="precip"):
        g.generate_dataset(PARAMS, ["t2m", "precip"])


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({k: v for k, v in PARAMS.items() if k != "n_lat"}, "n_lat"),
        ({**PARAMS, "n_days": 0}, "n_days"),
        ({**PARAMS, "start": "2000-13-01"}, "start"),
        ({**PARAMS, "start": "1/1/2000"}, "start"),
        ({**PARAMS, "resolution": 1}, "resolution"),
    ],
)
def test_bad_params_are_named(params: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        g.generate_dataset(params, ["t2m"])


def test_bad_chunk_days() -> None:
    with pytest.raises(ValueError, match="chunk_days"):
        g.generate_dataset(PARAMS, ["t2m"], chunk_days=0)


def test_seasonal_cycle_sign_per_hemisphere(two_years: xr.Dataset) -> None:
    month = two_years.time.dt.month
    for name in ("t2m", "z500"):
        da = two_years[name]
        north = da.sel(lat=slice(30, 90)).mean(("lat", "lon"))
        south = da.sel(lat=slice(-90, -30)).mean(("lat", "lon"))
        assert float(north.where(month == 7).mean()) > float(north.where(month == 1).mean())
        assert float(south.where(month == 7).mean()) < float(south.where(month == 1).mean())
    # poles colder and lower than the equator
    assert float(two_years.t2m.isel(lat=0).mean()) < float(two_years.t2m.isel(lat=16).mean()) - 20


def test_anomaly_size_and_persistence(two_years: xr.Dataset) -> None:
    for name, target in (("t2m", 3.0), ("z500", 80.0)):
        a = _anomaly(two_years, name) * sp.spectral_model(32, 64).scale[name]
        assert 0.75 * target < a.std() < 1.25 * target
        lag1 = float(np.mean(a[1:] * a[:-1]) / np.mean(a * a))
        assert 0.6 < lag1 < 0.9, (name, lag1)


def test_fields_move_downwind(two_years: xr.Dataset) -> None:
    """The lag-1 cross-correlation peaks 1 or more cells east (the wind is westerly)."""
    shifts = np.arange(-4, 5)
    for name in ("t2m", "z500"):
        a = _anomaly(two_years, name)
        corr = [np.mean(np.roll(a[1:], -s, axis=2) * a[:-1]) for s in shifts]
        best = int(shifts[int(np.argmax(corr))])
        assert best >= 1, (name, corr)
        assert best <= 3
    assert FIELDS["z500"].wind_x > FIELDS["t2m"].wind_x > 0


def test_optimal_linear_forecast_beats_persistence_and_climatology(two_years: xr.Dataset) -> None:
    """The true one-day operator A a(t) is learnable skill: well below both baselines."""
    n_lat, n_lon = 32, 64
    model = sp.spectral_model(n_lat, n_lon)
    z, t = _anomaly(two_years, "z500"), _anomaly(two_years, "t2m")

    def advance(a: np.ndarray, name: str) -> np.ndarray:
        phi = sp.propagator_grid(name, n_lat, n_lon)
        spec = np.fft.rfft2(a, norm="forward")
        return np.fft.irfft2(phi * spec, s=(n_lat, n_lon), norm="forward")

    predictions = {
        "z500": (z, advance(z[:-1], "z500")),
        "t2m": (t, advance(t[:-1], "t2m") + model.coupling * z[:-1]),
    }
    for name, (a, pred) in predictions.items():

        def rmse(err: np.ndarray) -> float:
            return float(np.sqrt(np.mean(err**2)))

        optimal = rmse(a[1:] - pred)
        persistence = rmse(a[1:] - a[:-1])
        climatology = rmse(a[1:] - a.mean(axis=0))
        assert optimal < 0.85 * persistence, (name, optimal, persistence)
        assert optimal < 0.7 * climatology, (name, optimal, climatology)


def _continuous_reference(
    seed: int, start_day: int, n_days: int, n_lat: int, n_lon: int
) -> dict[str, np.ndarray]:
    """The process run once, without blocks or truncated spin-up, from zero at the first
    block's spin-up start, with the same noise: an independent implementation."""
    model = sp.spectral_model(n_lat, n_lon)
    n = model.n_modes
    z = np.zeros(n, complex)
    t = np.zeros(n, complex)
    begin = (start_day // sp.BLOCK_DAYS) * sp.BLOCK_DAYS - sp.SPINUP_DAYS
    buf = np.zeros((n_lat, n_lon // 2 + 1), complex)
    fields: dict[str, list[np.ndarray]] = {"z500": [], "t2m": []}
    noise: dict[str, np.ndarray] = {}
    for day in range(begin, start_day + n_days):
        group, i = divmod(day, sp.GROUP_DAYS)
        if i == 0 or not noise:
            noise = {
                name: sp.noise(seed, spec, group, n, model.mean_pos)
                for name, spec in FIELDS.items()
            }
        t = model.phi["t2m"] * t + model.coupling * z + model.sigma["t2m"] * noise["t2m"][i]
        z = model.phi["z500"] * z + model.sigma["z500"] * noise["z500"][i]
        if day >= start_day:
            for name, state in (("z500", z), ("t2m", t)):
                fields[name].append(model.scale[name] * sp.to_grid(model, state, buf))
    days = np.datetime64("1970-01-01") + np.arange(start_day, start_day + n_days)
    lat = g.latitudes(n_lat)
    return {
        name: g.mean_state(name, lat, days)[:, :, None] + np.array(f) for name, f in fields.items()
    }


def test_block_spinup_truncation_is_invisible() -> None:
    """Blocks restarted from zero (with modes dropped once decayed) match the continuous
    process to float32 precision."""
    p = _params(start="2000-01-10", n_days=120, n_lat=16, n_lon=32)
    ds = g.generate_dataset(p, ["t2m", "z500"]).compute()
    start_day = int((np.datetime64("2000-01-10") - np.datetime64("1970-01-01")).astype(int))
    ref = _continuous_reference(42, start_day, 120, 16, 32)
    for name in ("t2m", "z500"):
        got = ds[name].values
        assert np.all(np.abs(got.astype(np.float64) - ref[name]) <= np.spacing(got)), name
    assert math.exp(-min(s.damping for s in FIELDS.values()) * sp.SPINUP_DAYS) < 1e-6


def test_odd_grid() -> None:
    ds = g.generate_dataset(_params(n_days=20, n_lat=9, n_lon=15), ["t2m"], chunk_days=6).compute()
    whole = g.generate_dataset(_params(n_days=20, n_lat=9, n_lon=15), ["t2m"]).compute()
    xrt.assert_identical(ds, whole)
    assert np.isfinite(ds.t2m).all()


def test_generated_chunk_days() -> None:
    # default size: a single chunk (never more than n_days)
    assert generated_chunk_days(32, 64, 2, sp.BLOCK_DAYS, n_days=1096) == 1096
    assert generated_chunk_days(32, 64, 2, sp.BLOCK_DAYS, n_days=5) == 5
    # at scale: 64-256 MB per chunk of all variables
    for n_lat, n_lon, n_vars in [(181, 360, 2), (721, 1440, 2), (721, 1440, 1), (361, 720, 2)]:
        days = generated_chunk_days(n_lat, n_lon, n_vars, sp.BLOCK_DAYS, n_days=100_000)
        size = days * n_lat * n_lon * n_vars * 4
        assert 64 * 2**20 <= size <= 256 * 2**20, (n_lat, n_lon, days, size)
        assert days < sp.BLOCK_DAYS or days % sp.BLOCK_DAYS == 0
    assert generated_chunk_days(4000, 8000, 2, sp.BLOCK_DAYS) == 1  # at least one day
    ds = g.generate_dataset(PARAMS, ["t2m", "z500"])
    assert ds.t2m.data.chunks[0] == (1096,)


def test_the_package_gives_the_generator_and_the_field_names():
    import hpcpipe.generate

    assert hpcpipe.generate.generate_dataset is g.generate_dataset
    assert hpcpipe.generate.FIELDS is FIELDS and list(FIELDS) == ["z500", "t2m"]
