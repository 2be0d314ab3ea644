"""The built-in synthetic dataset: a lazy, deterministic, chunk-independent Dask Dataset.

Each variable is ``x(t, lat, lon) = base(lat) + season(lat, doy(t)) + s_v * a_v(t, lat, lon)``.

The anomaly ``a_v`` is a linear stochastic advection–diffusion process on the doubly periodic
(lat, lon) grid, solved exactly in 2-D Fourier space (one step = one day, k in radians per
grid cell, u in cells per day, D in cells² per day, so the dynamics look the same in grid
terms at every resolution):

    phi_v(k)       = exp(-i k·u_v - D_v |k|² - lambda_v)
    z(t+1, k)      = phi_z(k) z(t, k)                 + sigma_z(k) eta_z(t+1, k)
    t(t+1, k)      = phi_t(k) t(t, k) + c z(t, k)     + sigma_t(k) eta_t(t+1, k)
    sigma_v(k)     ∝ 1 / (1 + (|k| L_v)²)             (red forcing spectrum, scale L_v cells)

where z is the z500 anomaly, t the t2m anomaly (forced by yesterday's z500 anomaly with
coupling c) and eta unit complex white noise. The exact one-day optimal forecast is therefore
``A a(t)``, which beats persistence (the fields move 1–2 cells a day) and climatology.
``s_v`` scales the stationary point-wise standard deviation of ``a_v`` to ``anomaly_std``.

Determinism: values are a pure function of (seed, grid, calendar day). Noise for a group of
GROUP_DAYS absolute days (days since 1970-01-01) and a variable comes from its own
Philox stream keyed on (seed, variable, group), drawn in Fourier space with the modes sorted
from slowest- to fastest-decaying. Time is cut into fixed blocks of BLOCK_DAYS absolute
days; a block starts from zero SPINUP_DAYS before it and replays the same noise, so any block
can be produced alone, whatever the chunking or the scheduler. During the spin-up a mode is
skipped once its decay over the remaining lag is below SPINUP_CUTOFF; because the noise is
drawn slowest-mode-first, the kept modes are a prefix of the same draws (bit-identical) and
the truncation changes nothing at float32 precision.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr

from hpcpipe.chunking import generated_chunk_days

# Fixed generation geometry. Changing any of these changes the data (it is part of the
# definition of the dataset), so they are constants, never derived from the chunking.
BLOCK_DAYS = 32  # days per independently generated block
SPINUP_DAYS = 128  # days of spin-up from zero before each block; exp(-0.15 * 128) ≈ 5e-9
GROUP_DAYS = 8  # days per noise stream; divides BLOCK_DAYS and SPINUP_DAYS
SPINUP_CUTOFF = 1e-8  # a mode whose decay over the lag is below this is skipped in spin-up
SOURCE = "hpcpipe builtin"

_EPOCH = np.datetime64("1970-01-01", "D")
_GROUP_KEY_OFFSET = 2**32  # spawn keys must be non-negative; day numbers may be negative
_PARAM_KEYS = ("seed", "start", "n_days", "n_lat", "n_lon")


@dataclass(frozen=True)
class VariableSpec:
    """Physical and dynamical parameters of one built-in variable (lengths in grid cells)."""

    name: str
    index: int  # fixed noise-stream index: selecting a subset must not change the values
    units: str
    long_name: str
    base: float  # value at the equator
    pole_drop: float  # base(lat) = base - pole_drop * sin²(lat)
    seasonal_amp: float  # season = seasonal_amp * sin(lat) * cycle(doy)
    anomaly_std: float  # stationary point-wise std of the anomaly, physical units
    wind_x: float  # eastward, cells per day
    wind_y: float  # northward, cells per day
    diffusivity: float  # cells² per day
    damping: float  # per day
    forcing_scale: float  # L of the forcing spectrum, cells


# z500 first: t2m is forced by it, so it is always simulated before t2m.
VARIABLES: dict[str, VariableSpec] = {
    "z500": VariableSpec(
        name="z500",
        index=0,
        units="m",
        long_name="geopotential height at 500 hPa (synthetic)",
        base=5600.0,
        pole_drop=400.0,
        seasonal_amp=100.0,
        anomaly_std=80.0,
        wind_x=2.0,
        wind_y=0.3,
        diffusivity=0.25,
        damping=0.15,
        forcing_scale=3.0,
    ),
    "t2m": VariableSpec(
        name="t2m",
        index=1,
        units="K",
        long_name="2 metre temperature (synthetic)",
        base=288.0,
        pole_drop=40.0,
        seasonal_amp=15.0,
        anomaly_std=3.0,
        wind_x=1.2,
        wind_y=-0.2,
        diffusivity=0.15,
        damping=0.2,
        forcing_scale=1.5,
    ),
}
COUPLING = 0.3  # t2m(t+1) += COUPLING * z500(t), both in model units (z500 has unit std)

# Seasonal cycle by 0-based day of year: -1 in mid-January, +1 in mid-July.
_CYCLE = -np.cos(2.0 * np.pi * (np.arange(366) - 15.0) / 365.25)


@dataclass(frozen=True)
class _Model:
    """The spectral model on one grid: modes sorted slowest-decaying first."""

    n_lat: int
    n_lon: int
    iy: np.ndarray  # row (ky) index of each mode in the rfft2 layout
    ix: np.ndarray  # column (kx) index
    mirror_sel: np.ndarray  # positions of the kx == 0, ky > 0 modes (real field: conj at -ky)
    mirror_iy: np.ndarray  # rows of those conjugates
    mean_pos: int  # position of the (0, 0) mode (real)
    phi: dict[str, np.ndarray]  # one-day propagator per variable, complex128
    sigma: dict[str, np.ndarray]  # forcing amplitude per variable, model units
    scale: dict[str, float]  # physical units per model unit
    coupling: float
    alive: tuple[int, ...]  # modes kept in spin-up group q (q = 0 is next to the block)

    @property
    def n_modes(self) -> int:
        return int(self.ix.size)


def _wavenumbers(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
    """ky, kx (radians per cell) on the rfft2 layout (n_lat, n_lon // 2 + 1)."""
    ky = 2.0 * np.pi * np.fft.fftfreq(n_lat)
    kx = 2.0 * np.pi * np.fft.rfftfreq(n_lon)
    return np.broadcast_arrays(ky[:, None], kx[None, :])


def propagator_grid(name: str, n_lat: int, n_lon: int) -> np.ndarray:
    """The exact one-day propagator phi(k) of ``name`` on the rfft2 layout (norm='forward').

    Nyquist rows/columns are 0: they are never forced (their advection is ambiguous).
    """
    spec = VARIABLES[name]
    ky, kx = _wavenumbers(n_lat, n_lon)
    phi = np.exp(
        -1j * (kx * spec.wind_x + ky * spec.wind_y)
        - spec.diffusivity * (kx**2 + ky**2)
        - spec.damping
    )
    if n_lat % 2 == 0:
        phi[n_lat // 2, :] = 0.0
    if n_lon % 2 == 0:
        phi[:, n_lon // 2] = 0.0
    return phi


@lru_cache(maxsize=16)
def _model(n_lat: int, n_lon: int) -> _Model:
    """Build (once per grid) the mode ordering, propagators, spectra and normalisation."""
    ky, kx = _wavenumbers(n_lat, n_lon)
    iy, ix = np.indices(ky.shape)
    # Independent modes of a real field: kx > 0 (all ky), kx == 0 with ky > 0, and (0, 0);
    # Nyquist row/column excluded (not representable as a travelling wave).
    keep = (ix > 0) | ((ix == 0) & (iy > 0) & (iy < (n_lat + 1) // 2)) | ((ix == 0) & (iy == 0))
    if n_lat % 2 == 0:
        keep &= iy != n_lat // 2
    if n_lon % 2 == 0:
        keep &= ix != n_lon // 2
    k2 = (kx**2 + ky**2)[keep]
    rate = np.min([s.damping + s.diffusivity * k2 for s in VARIABLES.values()], axis=0)
    order = np.argsort(rate, kind="stable")  # slowest first: spin-up keeps a prefix
    rate, k2 = rate[order], k2[order]
    iy_m, ix_m = iy[keep][order], ix[keep][order]
    weight = np.where((ix_m == 0) & (iy_m == 0), 1.0, 2.0)  # a mode and its conjugate

    phi = {n: propagator_grid(n, n_lat, n_lon)[iy_m, ix_m] for n in VARIABLES}
    sigma: dict[str, np.ndarray] = {}
    for name, spec in VARIABLES.items():
        sigma[name] = 1.0 / (1.0 + k2 * spec.forcing_scale**2)
    # Normalise z to unit stationary point-wise variance: S = sigma² / (1 - |phi|²).
    s_zz = sigma["z500"] ** 2 / (1.0 - np.abs(phi["z500"]) ** 2)
    norm_z = math.sqrt(float(np.sum(weight * s_zz)))
    sigma["z500"] = sigma["z500"] / norm_z
    s_zz = s_zz / norm_z**2
    # Normalise the t2m own forcing to unit variance, then add the z500-forced part exactly:
    # C_tz = c conj(phi_z) S_zz / (1 - phi_t conj(phi_z)),
    # S_tt = (c² S_zz + sigma_t² + 2 c Re(phi_t C_tz)) / (1 - |phi_t|²).
    p_t, p_z, c = phi["t2m"], phi["z500"], COUPLING
    s_own = sigma["t2m"] ** 2 / (1.0 - np.abs(p_t) ** 2)
    sigma["t2m"] = sigma["t2m"] / math.sqrt(float(np.sum(weight * s_own)))
    c_tz = c * np.conj(p_z) * s_zz / (1.0 - p_t * np.conj(p_z))
    s_tt = (c**2 * s_zz + sigma["t2m"] ** 2 + 2 * c * np.real(p_t * c_tz)) / (
        1.0 - np.abs(p_t) ** 2
    )
    sd = {"z500": 1.0, "t2m": math.sqrt(float(np.sum(weight * s_tt)))}
    scale = {n: VARIABLES[n].anomaly_std / sd[n] for n in VARIABLES}

    # Spin-up group q covers lags q*G+1 .. (q+1)*G before the block; keep the modes still
    # above the cutoff at its smallest lag (a prefix, as modes are sorted by rate).
    log_cut = -math.log(SPINUP_CUTOFF)
    alive = tuple(
        int(np.searchsorted(rate, log_cut / (q * GROUP_DAYS + 1), side="left"))
        for q in range(SPINUP_DAYS // GROUP_DAYS)
    )
    mirror_sel = np.flatnonzero((ix_m == 0) & (iy_m > 0))
    return _Model(
        n_lat=n_lat,
        n_lon=n_lon,
        iy=iy_m,
        ix=ix_m,
        mirror_sel=mirror_sel,
        mirror_iy=n_lat - iy_m[mirror_sel],
        mean_pos=int(np.flatnonzero((ix_m == 0) & (iy_m == 0))[0]),
        phi=phi,
        sigma=sigma,
        scale=scale,
        coupling=COUPLING,
        alive=alive,
    )


def _noise(seed: int, spec: VariableSpec, group: int, n_modes: int, mean_pos: int) -> np.ndarray:
    """Unit complex white noise (GROUP_DAYS, n_modes) of one variable and day group.

    Drawn mode-major, so the first ``n_modes`` modes are a prefix of the full draw.
    """
    ss = np.random.SeedSequence(seed, spawn_key=(spec.index, group + _GROUP_KEY_OFFSET))
    x = np.random.Generator(np.random.Philox(ss)).standard_normal((n_modes, GROUP_DAYS, 2))
    eta = (x[..., 0] + 1j * x[..., 1]) * math.sqrt(0.5)
    if mean_pos < n_modes:
        eta[mean_pos] = x[mean_pos, :, 0]  # the domain mean is real, unit variance
    return np.ascontiguousarray(eta.T)


def _simulate_block(
    model: _Model,
    seed: int,
    block: int,
    stop: int,
    names: Sequence[str],
    emit: Callable[[int, dict[str, np.ndarray]], None],
    first: int,
) -> None:
    """Run block ``block`` from its spin-up up to absolute day ``stop`` (exclusive).

    Calls ``emit(day, {name: coeffs})`` for each day >= ``first``. ``names`` is in VARIABLES
    order (z500 before t2m). The arithmetic depends only on the block, never on ``first`` or
    ``stop``, which is what makes chunks bit-identical.
    """
    specs = [VARIABLES[n] for n in names]
    has_z, has_t = "z500" in names, "t2m" in names
    m_all = model.n_modes
    state = {n: np.zeros(m_all, np.complex128) for n in names}
    tmp = np.empty(m_all, np.complex128)
    c = model.coupling
    day0 = block * BLOCK_DAYS
    first = max(first, day0)  # spin-up days are emitted by their own block
    n_groups_spin = SPINUP_DAYS // GROUP_DAYS
    # Groups in time order: spin-up (oldest first, fewer modes), then the block itself.
    plan = [(day0 - (q + 1) * GROUP_DAYS, model.alive[q]) for q in reversed(range(n_groups_spin))]
    plan += [(d, m_all) for d in range(day0, min(stop, day0 + BLOCK_DAYS), GROUP_DAYS)]
    for g_day, m in plan:
        if m == 0:
            continue
        forcing = {
            s.name: _noise(seed, s, g_day // GROUP_DAYS, m, model.mean_pos)
            * model.sigma[s.name][:m]
            for s in specs
        }
        phi = {n: model.phi[n][:m] for n in names}
        st = {n: state[n][:m] for n in names}
        tm = tmp[:m]
        for i in range(GROUP_DAYS):
            day = g_day + i
            if day >= stop:
                break
            if has_t:  # t(d) = phi_t t(d-1) + c z(d-1) + f_t(d): uses yesterday's z
                t = st["t2m"]
                t *= phi["t2m"]
                if has_z:
                    np.multiply(st["z500"], c, out=tm)
                    t += tm
                t += forcing["t2m"][i]
            if has_z:
                z = st["z500"]
                z *= phi["z500"]
                z += forcing["z500"][i]
            if day >= first:
                emit(day, state)


def _to_grid(model: _Model, coeffs: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Real field from the independent modes (fills the Hermitian kx=0 column)."""
    buf[model.iy, model.ix] = coeffs
    buf[model.mirror_iy, 0] = np.conj(coeffs[model.mirror_sel])
    return np.fft.irfft2(buf, s=(model.n_lat, model.n_lon), norm="forward")


def latitudes(n_lat: int) -> np.ndarray:
    """Cell-centre latitudes, south to north."""
    d = 180.0 / n_lat
    return -90.0 + d * (np.arange(n_lat) + 0.5)


def longitudes(n_lon: int) -> np.ndarray:
    """Longitudes 0 .. 360 - dlon."""
    return (360.0 / n_lon) * np.arange(n_lon)


def mean_state(name: str, lat: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Base state plus seasonal cycle (time, lat) for datetime64 ``days``, float64."""
    spec = VARIABLES[name]
    s = np.sin(np.deg2rad(np.asarray(lat, np.float64)))
    d = np.asarray(days).astype("datetime64[D]")
    doy = (d - d.astype("datetime64[Y]").astype("datetime64[D]")).astype(np.int64)
    # A fixed table (not np.cos on a chunk-sized array) keeps the values chunk-independent.
    return (spec.base - spec.pole_drop * s**2)[None, :] + spec.seasonal_amp * (
        _CYCLE[doy][:, None] * s[None, :]
    )


def _generate_chunk(
    *,
    seed: int,
    start_day: int,
    n_lat: int,
    n_lon: int,
    variables: tuple[str, ...],
    block_info: dict[Any, Any] | None = None,
) -> np.ndarray:
    """One Dask chunk (n_vars, days, lat, lon) float32: the blocks overlapping it, sliced."""
    assert block_info is not None
    (_, _), (i0, i1), _, _ = block_info[None]["array-location"]
    d0, d1 = start_day + i0, start_day + i1  # absolute days since 1970-01-01
    model = _model(n_lat, n_lon)
    names = tuple(n for n in VARIABLES if n in variables or (n == "z500" and "t2m" in variables))
    lat = latitudes(n_lat)
    days = _EPOCH + np.arange(d0, d1)
    means = {n: mean_state(n, lat, days) for n in variables}
    out = np.empty((len(variables), d1 - d0, n_lat, n_lon), np.float32)
    buf = np.zeros((n_lat, n_lon // 2 + 1), np.complex128)

    def emit(day: int, state: dict[str, np.ndarray]) -> None:
        j = day - d0
        for v, name in enumerate(variables):
            anom = _to_grid(model, state[name], buf)
            out[v, j] = (means[name][j][:, None] + model.scale[name] * anom).astype(np.float32)

    for block in range(d0 // BLOCK_DAYS, (d1 - 1) // BLOCK_DAYS + 1):
        _simulate_block(model, seed, block, d1, names, emit, first=d0)
    return out


def _check_params(params: Mapping[str, Any]) -> tuple[int, int, int, int, int]:
    """Validate dataset.builtin; returns seed, start day (since 1970), n_days, n_lat, n_lon."""
    missing = [k for k in _PARAM_KEYS if k not in params]
    unknown = sorted(set(params) - set(_PARAM_KEYS))
    if missing or unknown:
        raise ValueError(
            f"dataset.builtin: missing keys {missing}, unknown keys {unknown} "
            f"(expected {list(_PARAM_KEYS)})"
        )
    ints = {}
    for key, low in (("seed", 0), ("n_days", 1), ("n_lat", 4), ("n_lon", 4)):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"dataset.builtin.{key} must be an integer >= {low}, got {value!r}")
        ints[key] = int(value)
    start = params["start"]
    try:
        if isinstance(start, dt.datetime | pd.Timestamp) or not isinstance(start, dt.date | str):
            raise TypeError
        day = np.datetime64(start, "D")
        if isinstance(start, str) and str(day) != start.strip():
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"dataset.builtin.start must be an ISO date YYYY-MM-DD, got {start!r}"
        ) from exc
    start_day = int((day - _EPOCH).astype(np.int64))
    return ints["seed"], start_day, ints["n_days"], ints["n_lat"], ints["n_lon"]


def generate_dataset(
    params: Mapping[str, Any], variables: Sequence[str], chunk_days: int | None = None
) -> xr.Dataset:
    """The built-in dataset as a lazy Dask-backed Dataset (time, lat, lon), float32.

    ``params`` is the config section dataset.builtin (seed, start, n_days, n_lat, n_lon);
    ``variables`` a subset of VARIABLES in output order; ``chunk_days`` the time chunk length
    (default: chunking.generated_chunk_days). Values do not depend on ``chunk_days`` or the scheduler.
    """
    seed, start_day, n_days, n_lat, n_lon = _check_params(params)
    if isinstance(variables, str):
        raise ValueError(f"variables must be a list of names, got the string {variables!r}")
    variables = list(variables)
    unknown = [v for v in variables if v not in VARIABLES]
    if unknown:
        raise ValueError(
            f"unknown built-in variable(s) {unknown}; dataset.variables must be a subset of "
            f"{list(VARIABLES)} with dataset.source: builtin"
        )
    if not variables or len(set(variables)) != len(variables):
        raise ValueError(f"dataset.variables must be non-empty and unique, got {variables}")
    if chunk_days is None:
        chunk_days = generated_chunk_days(n_lat, n_lon, len(variables), BLOCK_DAYS, n_days=n_days)
    if (
        isinstance(chunk_days, bool)
        or not isinstance(chunk_days, int | np.integer)
        or chunk_days < 1
    ):
        raise ValueError(f"chunk_days must be a positive integer, got {chunk_days!r}")
    chunk_days = min(int(chunk_days), n_days)
    n_full, rest = divmod(n_days, chunk_days)
    time_chunks = (chunk_days,) * n_full + ((rest,) if rest else ())

    # One task per chunk computes all variables (t2m needs z500 anyway).
    data = da.map_blocks(
        _generate_chunk,
        chunks=((len(variables),), time_chunks, (n_lat,), (n_lon,)),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0), np.float32),
        seed=seed,
        start_day=start_day,
        n_lat=n_lat,
        n_lon=n_lon,
        variables=tuple(variables),
    )
    time = (_EPOCH + np.arange(start_day, start_day + n_days)).astype("datetime64[ns]")
    coords = {
        "time": ("time", time, {"standard_name": "time"}),
        "lat": ("lat", latitudes(n_lat), {"units": "degrees_north", "standard_name": "latitude"}),
        "lon": ("lon", longitudes(n_lon), {"units": "degrees_east", "standard_name": "longitude"}),
    }
    data_vars = {
        name: (
            ("time", "lat", "lon"),
            data[i],
            {"units": VARIABLES[name].units, "long_name": VARIABLES[name].long_name},
        )
        for i, name in enumerate(variables)
    }
    return xr.Dataset(data_vars, coords=coords, attrs={"source": SOURCE, "seed": seed})
