"""A small synthetic feature store (docs/data-contracts.md) for the training tests.

The stores are what the features step (hpcpipe.features) makes of a preprocessed dataset
whose normalised anomalies are a designed field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from hpcpipe import splits
from hpcpipe.features import split_features

VARIABLES = ["t2m", "z500"]
LAGS, LEADS = [0, 1], [1, 2]
GRID = (8, 16)
N_TIME = 160
# val starts one step after train ends, so that no val input is a training time step.
PERIODS = {"train": (0, 110), "val": (111, N_TIME)}


def _field(n_time: int) -> np.ndarray:
    """t2m moves one cell east per step, z500 one cell west; white-noise innovations.

    Persistence is poor (a one-cell shift of a rough field decorrelates it), while a
    3x3 convolution can learn the shift exactly, so a model must clearly beat persistence.
    """
    rng = np.random.default_rng(0)
    a = np.zeros((n_time, len(VARIABLES), *GRID))
    field = rng.standard_normal((len(VARIABLES), *GRID))
    for t in range(n_time):
        field[0] = np.roll(field[0], 1, axis=-1)
        field[1] = np.roll(field[1], -1, axis=-1)
        field = 0.95 * field + 0.3 * rng.standard_normal(field.shape)
        a[t] = field
    a = (a / a.std()).astype(np.float32)
    mask = np.ones((len(VARIABLES), *GRID), dtype=bool)
    mask[0, 2:4, 5:9] = False  # "land" for the sea-like variable: NaN in the anomalies
    return np.where(mask, a, np.nan).astype(np.float32)


def preprocessed(a: np.ndarray) -> xr.Dataset:
    """A preprocessed store whose anomalies are ``a``: zero climatology, mean 0 and std 1."""
    n_time = a.shape[0]
    time = np.datetime64("2000-01-01", "ns") + np.arange(n_time) * np.timedelta64(1, "D")
    period = xr.DataArray(np.arange(1, 13), dims="period", attrs={"kind": "month"})
    return xr.Dataset(
        {
            "anomaly": (("time", "variable", "lat", "lon"), a),
            "climatology": (("period", "variable", "lat", "lon"), np.zeros((12, *a.shape[1:]))),
            "mean": ("variable", np.zeros(len(VARIABLES))),
            "std": ("variable", np.ones(len(VARIABLES))),
        },
        coords={
            "time": time,
            "variable": VARIABLES,
            "lat": np.linspace(-78.75, 78.75, GRID[0]),
            "lon": np.arange(GRID[1]) * 360.0 / GRID[1],
            "period": period,
            "split": ("time", splits.labels(n_time, PERIODS)),
        },
    )


def make_features(root: Path) -> Path:
    """train.zarr and val.zarr of the designed field in ``root``."""
    pre = preprocessed(_field(N_TIME))
    for split in PERIODS:
        params = {"lags": LAGS, "leads": LEADS, "derived": ["gradient"]}
        ds = split_features(pre, split, params).load()
        # Chunked along sample only, as the contract says (two chunks in train).
        ds.chunk({"sample": 64}).to_zarr(root / f"{split}.zarr", zarr_format=2, consolidated=True)
    return root
