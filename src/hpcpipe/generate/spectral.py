"""The spectral model of the built-in anomalies, and the noise that drives it.

The anomaly ``a_v`` of each field is a linear stochastic advection–diffusion process on the
doubly periodic (lat, lon) grid, solved exactly in 2-D Fourier space (one step = one day,
k in radians per grid cell, u in cells per day, D in cells² per day):

    phi_v(k)       = exp(-i k·u_v - D_v |k|² - lambda_v)
    z(t+1, k)      = phi_z(k) z(t, k)                 + sigma_z(k) eta_z(t+1, k)
    t(t+1, k)      = phi_t(k) t(t, k) + c z(t, k)     + sigma_t(k) eta_t(t+1, k)
    sigma_v(k)     ∝ 1 / (1 + (|k| L_v)²)             (red forcing spectrum, scale L_v cells)

where z is the z500 anomaly, t the t2m anomaly (forced by yesterday's z500 anomaly with
coupling c) and eta unit complex white noise. The exact one-day optimal forecast is therefore
``A a(t)``, which beats persistence (the fields move 1–2 cells a day) and climatology.
``scale`` turns model units into physical ones, so that the stationary point-wise standard
deviation of ``a_v`` is the field's ``anomaly_std``.

Determinism: values are a pure function of (seed, grid, calendar day). Noise for a group of
GROUP_DAYS absolute days (days since 1970-01-01) and a field comes from its own Philox
stream keyed on (seed, field, group), drawn in Fourier space with the modes sorted from
slowest- to fastest-decaying. Time is cut into fixed blocks of BLOCK_DAYS absolute days; a
block starts from zero SPINUP_DAYS before it and replays the same noise, so any block can be
produced alone, whatever the chunking or the scheduler. During the spin-up a mode is skipped
once its decay over the remaining lag is below SPINUP_CUTOFF; because the noise is drawn
slowest-mode-first, the kept modes are a prefix of the same draws (bit-identical) and the
truncation changes nothing at float32 precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hpcpipe.generate.fields import COUPLING, FIELDS, FieldSpec

# Fixed generation geometry. Changing any of these changes the data (it is part of the
# definition of the dataset), so they are constants, never derived from the chunking.
BLOCK_DAYS = 32  # days per independently generated block
SPINUP_DAYS = 128  # days of spin-up from zero before each block; exp(-0.15 * 128) ≈ 5e-9
GROUP_DAYS = 8  # days per noise stream; divides BLOCK_DAYS and SPINUP_DAYS
SPINUP_CUTOFF = 1e-8  # a mode whose decay over the lag is below this is skipped in spin-up

_GROUP_KEY_OFFSET = 2**32  # spawn keys must be non-negative; day numbers may be negative


@dataclass(frozen=True)
class SpectralModel:
    """The spectral model on one grid: modes sorted slowest-decaying first."""

    n_lat: int
    n_lon: int
    iy: np.ndarray  # row (ky) index of each mode in the rfft2 layout
    ix: np.ndarray  # column (kx) index
    mirror_sel: np.ndarray  # positions of the kx == 0, ky > 0 modes (real field: conj at -ky)
    mirror_iy: np.ndarray  # rows of those conjugates
    mean_pos: int  # position of the (0, 0) mode (real)
    phi: dict[str, np.ndarray]  # one-day propagator per field, complex128
    sigma: dict[str, np.ndarray]  # forcing amplitude per field, model units
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
    spec = FIELDS[name]
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


def _independent_modes(
    n_lat: int, n_lon: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Decay rate, |k|², row and column of the independent modes, slowest-decaying first."""
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
    rate = np.min([s.damping + s.diffusivity * k2 for s in FIELDS.values()], axis=0)
    order = np.argsort(rate, kind="stable")  # slowest first: spin-up keeps a prefix
    return rate[order], k2[order], iy[keep][order], ix[keep][order]


def _forcing(
    phi: dict[str, np.ndarray], k2: np.ndarray, weight: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Forcing amplitude per mode (model units) and physical units per model unit, per field.

    ``weight`` counts a mode and its conjugate: the point-wise variance is the weighted sum.
    """
    sigma = {name: 1.0 / (1.0 + k2 * spec.forcing_scale**2) for name, spec in FIELDS.items()}
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
    return sigma, {n: FIELDS[n].anomaly_std / sd[n] for n in FIELDS}


def _alive(rate: np.ndarray) -> tuple[int, ...]:
    """Modes kept in each spin-up group (a prefix, as modes are sorted by rate).

    Group q covers lags q*G+1 .. (q+1)*G before the block; a mode is kept while it is still
    above the cutoff at the group's smallest lag.
    """
    log_cut = -math.log(SPINUP_CUTOFF)
    return tuple(
        int(np.searchsorted(rate, log_cut / (q * GROUP_DAYS + 1), side="left"))
        for q in range(SPINUP_DAYS // GROUP_DAYS)
    )


@lru_cache(maxsize=16)
def spectral_model(n_lat: int, n_lon: int) -> SpectralModel:
    """Build (once per grid) the mode ordering, propagators, spectra and normalisation."""
    rate, k2, iy, ix = _independent_modes(n_lat, n_lon)
    weight = np.where((ix == 0) & (iy == 0), 1.0, 2.0)  # a mode and its conjugate
    phi = {n: propagator_grid(n, n_lat, n_lon)[iy, ix] for n in FIELDS}
    sigma, scale = _forcing(phi, k2, weight)
    mirror_sel = np.flatnonzero((ix == 0) & (iy > 0))
    return SpectralModel(
        n_lat=n_lat,
        n_lon=n_lon,
        iy=iy,
        ix=ix,
        mirror_sel=mirror_sel,
        mirror_iy=n_lat - iy[mirror_sel],
        mean_pos=int(np.flatnonzero((ix == 0) & (iy == 0))[0]),
        phi=phi,
        sigma=sigma,
        scale=scale,
        coupling=COUPLING,
        alive=_alive(rate),
    )


def noise(seed: int, spec: FieldSpec, group: int, n_modes: int, mean_pos: int) -> np.ndarray:
    """Unit complex white noise (GROUP_DAYS, n_modes) of one field and day group.

    Drawn mode-major, so the first ``n_modes`` modes are a prefix of the full draw.
    """
    ss = np.random.SeedSequence(seed, spawn_key=(spec.index, group + _GROUP_KEY_OFFSET))
    x = np.random.Generator(np.random.Philox(ss)).standard_normal((n_modes, GROUP_DAYS, 2))
    eta = (x[..., 0] + 1j * x[..., 1]) * math.sqrt(0.5)
    if mean_pos < n_modes:
        eta[mean_pos] = x[mean_pos, :, 0]  # the domain mean is real, unit variance
    return np.ascontiguousarray(eta.T)


def _plan(model: SpectralModel, block: int, stop: int) -> list[tuple[int, int]]:
    """(first day, modes) of each noise group of a block's run, in time order.

    The spin-up first (oldest group first, with fewer modes), then the block itself.
    """
    day0 = block * BLOCK_DAYS
    n_spin = SPINUP_DAYS // GROUP_DAYS
    plan = [(day0 - (q + 1) * GROUP_DAYS, model.alive[q]) for q in reversed(range(n_spin))]
    plan += [(d, model.n_modes) for d in range(day0, min(stop, day0 + BLOCK_DAYS), GROUP_DAYS)]
    return plan


def _step(
    c: float,
    state: dict[str, np.ndarray],
    phi: dict[str, np.ndarray],
    forcing: dict[str, np.ndarray],
    tmp: np.ndarray,
) -> None:
    """Advance the modes in ``state`` one day, in place."""
    if "t2m" in state:  # t(d) = phi_t t(d-1) + c z(d-1) + f_t(d): uses yesterday's z
        t = state["t2m"]
        t *= phi["t2m"]
        if "z500" in state:
            np.multiply(state["z500"], c, out=tmp)
            t += tmp
        t += forcing["t2m"]
    if "z500" in state:
        z = state["z500"]
        z *= phi["z500"]
        z += forcing["z500"]


def simulate_block(
    model: SpectralModel,
    seed: int,
    block: int,
    stop: int,
    names: Sequence[str],
    emit: Callable[[int, dict[str, np.ndarray]], None],
    first: int,
) -> None:
    """Run block ``block`` from its spin-up up to absolute day ``stop`` (exclusive).

    Calls ``emit(day, {name: coeffs})`` for each day >= ``first``. ``names`` is in FIELDS
    order (z500 before t2m). The arithmetic depends only on the block, never on ``first`` or
    ``stop``, which is what makes chunks bit-identical.
    """
    specs = [FIELDS[n] for n in names]
    state = {n: np.zeros(model.n_modes, np.complex128) for n in names}
    tmp = np.empty(model.n_modes, np.complex128)
    first = max(first, block * BLOCK_DAYS)  # spin-up days are emitted by their own block
    for g_day, m in _plan(model, block, stop):
        if m == 0:
            continue
        forcing = {
            s.name: noise(seed, s, g_day // GROUP_DAYS, m, model.mean_pos) * model.sigma[s.name][:m]
            for s in specs
        }
        phi = {n: model.phi[n][:m] for n in names}
        kept = {n: state[n][:m] for n in names}  # views; modes not kept yet stay zero
        for i in range(min(GROUP_DAYS, stop - g_day)):
            _step(model.coupling, kept, phi, {n: f[i] for n, f in forcing.items()}, tmp[:m])
            if g_day + i >= first:
                emit(g_day + i, state)


def to_grid(model: SpectralModel, coeffs: np.ndarray, buf: np.ndarray) -> np.ndarray:
    """Real field from the independent modes (fills the Hermitian kx=0 column)."""
    buf[model.iy, model.ix] = coeffs
    buf[model.mirror_iy, 0] = np.conj(coeffs[model.mirror_sel])
    return np.fft.irfft2(buf, s=(model.n_lat, model.n_lon), norm="forward")
