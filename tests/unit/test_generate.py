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
    block's spin-up start, with the same noise.

    Not an independent implementation of the physics: it reuses the generator's model
    (propagators, forcing, scale), noise, grid transform and mean state, so it checks the
    blocking and the spin-up truncation only. The physics is checked against analytic
    results that share nothing with the generator (below).
    """
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


# --- the physics against analytic results, sharing nothing with hpcpipe.generate ---------------
#
# Only the documented parameters are read (fields.FIELDS); every expectation is derived here:
#
# advection-diffusion with damping, da/dt = -u·∇a + D ∇²a - λ a, on the doubly periodic grid
# (k in radians per cell, numpy's FFT sign), turns each Fourier mode into
#     a_k(t + τ) = exp(-τ (i k·u + D |k|² + λ)) a_k(t)     (a shift by u·τ cells, then decay)
# and with white forcing of amplitude σ(k) each mode of z500 is a complex AR(1) process:
#     stationary variance S(k) = σ(k)² / (1 - |φ(k)|²),  σ(k) ∝ 1 / (1 + (|k| L)²),
# normalised so that the point-wise variance Σ_k S(k) (Parseval) is anomaly_std².
#
# The mean state (base and seasonal cycle) is zonally uniform, so the modes with kx != 0 of the
# raw data are pure anomaly: no mean state needs removing. The tolerances are 5 standard errors
# of each estimator for the sample at hand (N days), from the standard large-sample results for
# AR(1) processes (each named where used): a chance failure is ~1e-6 per check, ~1e-3 over the
# thousands of per-mode checks (and the data are fixed by the seed; seeds 0-11 pass too).

N_SIGMA = 5.0


def _wavenumbers(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """ky, kx (radians per cell) of numpy's fft2 layout, broadcast to (n_lat, n_lon)."""
    ky = 2 * np.pi * np.fft.fftfreq(n_lat)[:, None]
    kx = 2 * np.pi * np.fft.fftfreq(n_lon)[None, :]
    return np.broadcast_arrays(ky, kx)


def _analytic_propagator(name: str, n_lat: int, n_lon: int) -> np.ndarray:
    """exp(-(i k·u + D |k|² + λ)): one day of advection-diffusion with damping, per mode."""
    f = FIELDS[name]
    ky, kx = _wavenumbers(n_lat, n_lon)
    return np.exp(
        -1j * (kx * f.wind_x + ky * f.wind_y) - f.diffusivity * (kx**2 + ky**2) - f.damping
    )


def _modes(ds: xr.Dataset, name: str) -> np.ndarray:
    """(time, ky, kx) Fourier modes of the raw field, norm='forward' (Σ|mode|² = mean square)."""
    return np.fft.fft2(ds[name].values.astype(np.float64), norm="forward")


def _travelling(n_lat: int, n_lon: int, k_max: int = 7) -> np.ndarray:
    """The large-scale modes with kx != 0: 1 <= kx <= k_max, |ky| <= k_max (in grid indices)."""
    iy, ix = np.indices((n_lat, n_lon))
    ky = np.where(iy > n_lat // 2, iy - n_lat, iy)
    return (ix >= 1) & (ix <= k_max) & (np.abs(ky) <= k_max)


def _not_nyquist(n_lat: int, n_lon: int) -> np.ndarray:
    """Every mode but the Nyquist row and column (never forced: no travelling wave there)."""
    keep = np.ones((n_lat, n_lon), bool)
    keep[n_lat // 2, :] = n_lat % 2 == 1
    keep[:, n_lon // 2] = n_lon % 2 == 1
    return keep


def _lag_ratio(a: np.ndarray, lag: int) -> np.ndarray:
    """Least-squares estimate of a(t + lag) = r a(t), per mode."""
    return (a[lag:] * np.conj(a[:-lag])).sum(0) / (np.abs(a[:-lag]) ** 2).sum(0)


def _check_propagator(name: str, r: np.ndarray, var: np.ndarray, sel: np.ndarray) -> None:
    """Fit wind, diffusivity and damping to estimated one-day propagators r (variance var).

    -arg r = kx u + ky v and -ln|r| = D |k|² + λ; either has variance var / (2 |r|²) (the
    error of r split evenly between its phase and its modulus), the weights of the fit.
    """
    f = FIELDS[name]
    ky, kx = (k[sel] for k in _wavenumbers(*sel.shape))
    weight = 2 * np.abs(r[sel]) ** 2 / var[sel]
    fits = {
        "wind (x, y)": (np.stack([kx, ky], 1), -np.angle(r[sel]), (f.wind_x, f.wind_y)),
        "diffusivity, damping": (
            np.stack([kx**2 + ky**2, np.ones_like(kx)], 1), -np.log(np.abs(r[sel])),
            (f.diffusivity, f.damping),
        ),
    }  # fmt: skip
    for what, (design, y, expected) in fits.items():
        cov = np.linalg.inv(design.T @ (design * weight[:, None]))
        got = cov @ (design.T @ (weight * y))
        se = np.sqrt(np.diag(cov))
        assert np.all(np.abs(got - expected) <= N_SIGMA * se), (name, what, got, se, expected)


def test_a_fourier_mode_travels_and_decays_as_advection_diffusion_predicts(
    two_years: xr.Dataset,
) -> None:
    """z500: the lag-τ regression of each large-scale mode on itself is exp(-τ(ik·u+D|k|²+λ)).

    For an AR(1) mode the estimate's error has E|r̂_τ - φ^τ|² = ((1+ρ)(1-ρ^τ)/(1-ρ) - 2τρ^τ)/N,
    ρ = |φ|² (Bartlett's formula), and |error|²/that is about Exp(1)-distributed: each mode must
    stay under N_SIGMA² of it, and their mean (M modes) under 1 + N_SIGMA/√M. The one-day
    estimates then give the wind (the phase speed) and the decay rates, each within 5 SE.
    """
    z = _modes(two_years, "z500")
    n, sel = z.shape[0], _travelling(*z.shape[1:])
    phi = _analytic_propagator("z500", *z.shape[1:])
    rho = np.abs(phi) ** 2
    for lag in (1, 2, 3):
        var = ((1 + rho) * (1 - rho**lag) / (1 - rho) - 2 * lag * rho**lag) / (n - lag)
        chi = np.abs(_lag_ratio(z, lag) - phi**lag) ** 2 / var
        assert chi[sel].max() < N_SIGMA**2, (lag, chi[sel].max())
        assert chi[sel].mean() < 1 + N_SIGMA / math.sqrt(sel.sum()), (lag, chi[sel].mean())
    _check_propagator("z500", _lag_ratio(z, 1), (1 - rho) / (n - 1), sel)


def test_t2m_has_its_own_propagator_red_forcing_and_a_scalar_coupling_to_yesterdays_z500(
    two_years: xr.Dataset,
) -> None:
    """t2m: T_k(t+1) = a_k T_k(t) + b_k Z_k(t) + e_k(t+1), with a_k t2m's own
    exp(-(ik·u+D|k|²+λ)), b_k one real, positive number for every mode (a local coupling to
    yesterday's z500) and the innovation variance ∝ 1 / (1 + (|k| L)²)² with t2m's own L.

    Per-mode least squares over every mode with kx != 0; the errors of a_k and b_k are complex
    normal with the OLS variances s² (X^H X)^-1 (s² the residual variance), checked as for
    z500; s² itself has relative SE 1/√(N-2) (white complex-normal innovations).
    """
    f = FIELDS["t2m"]
    z, t = _modes(two_years, "z500"), _modes(two_years, "t2m")
    n, shape = z.shape[0], z.shape[1:]
    ky, kx = _wavenumbers(*shape)
    forced = (kx != 0) & _not_nyquist(*shape)
    regressors = np.stack([t[:-1, forced], z[:-1, forced]], axis=-1)  # (time, mode, 2)
    gram = np.einsum("tmi,tmj->mij", regressors.conj(), regressors)
    rhs = np.einsum("tmi,tm->mi", regressors.conj(), t[1:, forced])
    coef = np.linalg.solve(gram, rhs[..., None])[..., 0]
    resid = t[1:, forced] - np.einsum("tmi,mi->tm", regressors, coef)
    s2 = (np.abs(resid) ** 2).sum(0) / (n - 3)
    var = s2[:, None] * np.real(np.diagonal(np.linalg.inv(gram), axis1=1, axis2=2))
    large = _travelling(*shape)[forced]  # the large scales, as for z500
    m = int(large.sum())
    a, b = coef[:, 0], coef[:, 1]
    chi_a = np.abs(a - _analytic_propagator("t2m", *shape)[forced]) ** 2 / var[:, 0]
    assert chi_a[large].max() < N_SIGMA**2, chi_a[large].max()
    assert chi_a[large].mean() < 1 + N_SIGMA / math.sqrt(m), chi_a[large].mean()
    a_grid, var_grid = np.zeros(shape, complex), np.ones(shape)
    a_grid[forced], var_grid[forced] = a, var[:, 0]
    _check_propagator("t2m", a_grid, var_grid, _travelling(*shape))
    weight = 1 / var[large, 1]
    b_mean = (weight * b[large]).sum() / weight.sum()
    se = math.sqrt(1 / weight.sum())
    assert b_mean.real > N_SIGMA * se and abs(b_mean.imag) < N_SIGMA * se, (b_mean, se)
    chi_b = np.abs(b[large] - b_mean) ** 2 / var[large, 1]
    assert chi_b.max() < N_SIGMA**2 and chi_b.mean() < 1 + N_SIGMA / math.sqrt(m), chi_b
    # the red forcing: s² / shape the same for every mode, within s²'s relative SE
    red = 1 / (1 + (kx**2 + ky**2)[forced] * f.forcing_scale**2) ** 2
    ratio = s2 / red
    z_score = (ratio / ratio.mean() - 1) * math.sqrt(n - 3)
    assert np.abs(z_score).max() < N_SIGMA, np.abs(z_score).max()
    assert (z_score**2).mean() < 1 + N_SIGMA * math.sqrt(2 / z_score.size), (z_score**2).mean()


def test_red_noise_forcing_and_the_stationary_variance_of_each_mode(
    two_years: xr.Dataset,
) -> None:
    """z500, every mode with kx != 0: the innovation Z(t+1) - φ Z(t) has variance
    σ²(k) = A / (1 + (|k| L)²)², the mode itself σ²(k) / (1 - |φ|²), with A set by the documented
    point-wise std (Σ over all modes but Nyquist's = anomaly_std²).

    Standard errors: the innovations are white and complex normal, so the mean of N values of
    |e|² has relative SE 1/√N; the mean of |Z|² of an AR(1) mode has relative SE
    √((1+|φ|²)/((1-|φ|²) N)) (|Z(t)|² has autocorrelation |φ|^(2τ)).
    """
    f = FIELDS["z500"]
    z = _modes(two_years, "z500")
    n, shape = z.shape[0], z.shape[1:]
    ky, kx = _wavenumbers(*shape)
    phi = _analytic_propagator("z500", *shape)
    rho = np.abs(phi) ** 2
    red = 1 / (1 + (kx**2 + ky**2) * f.forcing_scale**2) ** 2
    amplitude = f.anomaly_std**2 / (red / (1 - rho))[_not_nyquist(*shape)].sum()
    sigma2, stationary = amplitude * red, amplitude * red / (1 - rho)
    forced = (kx != 0) & _not_nyquist(*shape)
    innovation = (np.abs(z[1:] - phi * z[:-1]) ** 2).mean(0)
    power = (np.abs(z) ** 2).mean(0)
    checks = {
        "innovation variance": (innovation, sigma2, np.full(shape, 1 / math.sqrt(n - 1))),
        "stationary variance": (power, stationary, np.sqrt((1 + rho) / ((1 - rho) * n))),
    }
    for what, (got, want, rel_se) in checks.items():
        z_score = (got / want - 1) / rel_se
        assert np.abs(z_score[forced]).max() < N_SIGMA, (what, np.abs(z_score[forced]).max())
        # summed over the modes: the sum's SE from the per-mode ones (independent modes)
        pooled_se = math.sqrt(((want * rel_se)[forced] ** 2).sum())
        assert abs(got[forced].sum() - want[forced].sum()) < N_SIGMA * pooled_se, what


# Twenty years on a small grid for the seasonal cycle and the point-wise std: the fits then
# rest on ~7300 days, and the long-run variance of the residuals is well estimated.
LONG = {"seed": 42, "start": "2000-01-01", "n_days": 7305, "n_lat": 16, "n_lon": 32}
YEAR = 365.25


@pytest.fixture(scope="module")
def twenty_years() -> xr.Dataset:
    return g.generate_dataset(LONG, ["t2m", "z500"]).compute()


def _harmonic_design(ds: xr.Dataset) -> np.ndarray:
    """[1, cos ωd, sin ωd] of the 0-based day of year d, ω = 2π / 365.25."""
    d = ds["time"].dt.dayofyear.values - 1.0
    w = 2 * np.pi / YEAR
    return np.stack([np.ones_like(d), np.cos(w * d), np.sin(w * d)], axis=1)


def _long_run_variance(resid: np.ndarray, max_lag: int = 60) -> float:
    """Σ_τ autocovariance of the residual series (time, series), pooled over the series
    (same statistics: the anomaly is homogeneous), Bartlett-weighted up to max_lag days
    (the slowest mode decays as exp(-0.15 τ): 1e-4 at 60 days)."""
    n = resid.shape[0]
    acov = [float((resid[k:] * resid[: n - k]).mean()) * (n - k) / n for k in range(max_lag + 1)]
    return acov[0] + 2 * sum((1 - k / (max_lag + 1)) * acov[k] for k in range(1, max_lag + 1))


@pytest.mark.parametrize("name", ["z500", "t2m"])
def test_seasonal_cycle_amplitude_and_phase_are_the_documented_ones(
    twenty_years: xr.Dataset, name: str
) -> None:
    """Zonal means fit by c0 + c1 cos ωd + c2 sin ωd per latitude: c0 = base - pole_drop sin²φ
    and the cycle seasonal_amp sin φ, -1 on day 15 (mid-January) and +1 half a year later
    (fields.py, dataset.py), i.e. (c1, c2) = -seasonal_amp sin φ (cos 15ω, sin 15ω).

    SE of each coefficient: the OLS (X^T X)^-1 scaled by the residuals' long-run variance
    (autocorrelated residuals). Pooled over latitudes (errors shared by latitudes do not
    average out, so each pooled series has its own long-run variance): the domain mean gives
    the base to ~1.7 m (z500) / 0.07 K (t2m), the projection on sin φ the amplitude to ~0.9 % /
    0.25 % and the day of the minimum to ~0.5 / 0.15 days (one SE each).
    """
    f = FIELDS[name]
    x = twenty_years[name].values.astype(np.float64).mean(axis=2)  # (time, lat)
    design = _harmonic_design(twenty_years)
    inv = np.linalg.inv(design.T @ design)
    s = np.sin(np.deg2rad(twenty_years["lat"].values))
    w = 2 * np.pi / YEAR
    coef = inv @ design.T @ x
    se = np.sqrt(np.diag(inv) * _long_run_variance(x - design @ coef))
    expected = np.stack([f.base - f.pole_drop * s**2, -f.seasonal_amp * s * math.cos(15 * w),
                         -f.seasonal_amp * s * math.sin(15 * w)])  # fmt: skip
    assert np.all(np.abs(coef - expected) <= N_SIGMA * se[:, None]), (coef - expected) / se[:, None]
    # pooled: the grid mean (unweighted: the anomaly is homogeneous on the grid)
    q = x.mean(axis=1)
    c = inv @ design.T @ q
    se_q = np.sqrt(np.diag(inv) * _long_run_variance((q - design @ c)[:, None]))[0]
    assert abs(c[0] - expected[0].mean()) < N_SIGMA * se_q, (c[0], expected[0].mean(), se_q)
    # pooled: the projection on sin φ holds the cycle alone (the base is symmetric in φ)
    p = x @ s / (s @ s)
    c = inv @ design.T @ p
    se_p = np.sqrt(np.diag(inv) * _long_run_variance((p - design @ c)[:, None]))[1]
    amplitude = math.hypot(c[1], c[2])
    day_of_minimum = math.atan2(-c[2], -c[1]) / w
    assert abs(amplitude - f.seasonal_amp) < N_SIGMA * se_p, (amplitude, se_p)
    assert abs(day_of_minimum - 15) < N_SIGMA * se_p / (amplitude * w), (day_of_minimum, se_p)


@pytest.mark.parametrize("name", ["z500", "t2m"])
def test_point_wise_anomaly_std_is_the_documented_one(twenty_years: xr.Dataset, name: str) -> None:
    """The field minus its fitted mean state (per latitude, as above) has the documented
    point-wise std. SE of the mean square V = Σ_k P_k (Parseval): independent modes whose |X_k|²
    have autocorrelation ~ r_k^(2τ), so Var V ≈ 2/N Σ_k P_k² (1 + r_k²)/(1 - r_k²) (the factor
    2: a mode and its conjugate are one variable), estimated from the data's own P_k, r_k."""
    x = twenty_years[name].values.astype(np.float64)
    design = _harmonic_design(twenty_years)
    zonal = x.mean(axis=2)
    resid = x - (design @ np.linalg.lstsq(design, zonal, rcond=None)[0])[:, :, None]
    modes = np.fft.fft2(resid, norm="forward")
    power = (np.abs(modes) ** 2).mean(0)
    r2 = (np.abs(_lag_ratio(modes, 1)) ** 2).clip(max=0.99)
    se = math.sqrt(2 / x.shape[0] * (power**2 * (1 + r2) / (1 - r2)).sum())
    mean_square = float((resid**2).mean())
    assert abs(mean_square - FIELDS[name].anomaly_std ** 2) < N_SIGMA * se, (mean_square, se)


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
