"""The built-in dataset's fields: names, units and the parameters of their dynamics.

Plain data on purpose (no NumPy, xarray or Dask): config validation imports the names.
Lengths are in grid cells and times in days, so the dynamics look the same in grid terms at
every resolution. Changing any value changes the data.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldSpec:
    """Physical and dynamical parameters of one built-in field (lengths in grid cells)."""

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
FIELDS: dict[str, FieldSpec] = {
    "z500": FieldSpec(
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
    "t2m": FieldSpec(
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
