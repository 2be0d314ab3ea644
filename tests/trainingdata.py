"""A small synthetic feature store (docs/data-contracts.md) for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

VARIABLES = ["t2m", "z500"]
LAGS, LEADS = [0, 1], [1, 2]
GRID = (8, 16)


def _split_store(
    a: np.ndarray, time: np.ndarray, mask: np.ndarray, i0: int, i1: int, split: str
) -> xr.Dataset:
    """The features of time steps [i0, i1) exactly as the features step writes them."""
    s0, s1 = i0 + max(LAGS), i1 - max(LEADS)
    parts = [a[s0 - lag : s1 - lag] for lag in LAGS]
    lag0 = a[s0:s1]
    ddx = 0.5 * (np.roll(lag0, -1, axis=-1) - np.roll(lag0, 1, axis=-1))
    ddy = np.gradient(lag0, axis=-2)
    inputs = np.nan_to_num(np.concatenate([*parts, ddx, ddy], axis=1)).astype(np.float32)
    targets = np.nan_to_num(np.stack([a[s0 + lead : s1 + lead] for lead in LEADS], axis=1))
    channels = [f"{v}_lag{lag}" for lag in LAGS for v in VARIABLES]
    channels += [f"{v}_ddx" for v in VARIABLES] + [f"{v}_ddy" for v in VARIABLES]
    n = s1 - s0
    return xr.Dataset(
        {
            "inputs": (("sample", "channel", "lat", "lon"), inputs),
            "targets": (("sample", "lead", "variable", "lat", "lon"), targets.astype(np.float32)),
            "mask": (("variable", "lat", "lon"), mask),
        },
        coords={
            "sample": np.arange(n),
            "time": ("sample", time[s0:s1]),
            "valid_time": (
                ("sample", "lead"),
                np.stack([time[s0 + ld : s1 + ld] for ld in LEADS], 1),
            ),
            "lead": np.asarray(LEADS, dtype=np.int64),
            "channel": channels,
            "variable": VARIABLES,
            "lat": np.linspace(-78.75, 78.75, GRID[0]),
            "lon": np.arange(GRID[1]) * 360.0 / GRID[1],
        },
        attrs={"split": split, "lags": LAGS, "leads": LEADS},
    )


def make_features(root: Path) -> Path:
    """t2m moves one cell east per step, z500 one cell west; white-noise innovations.

    Persistence is poor (a one-cell shift of a rough field decorrelates it), while a
    3x3 convolution can learn the shift exactly, so a model must clearly beat persistence.
    """
    rng = np.random.default_rng(0)
    n_time = 160
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
    a = np.where(mask, a, np.nan).astype(np.float32)
    time = np.datetime64("2000-01-01", "ns") + np.arange(n_time) * np.timedelta64(1, "D")
    for split, (i0, i1) in {"train": (0, 110), "val": (110, 160)}.items():
        ds = _split_store(a, time, mask, i0, i1, split)
        # Chunked along sample only, as the contract says (two chunks in train).
        ds.chunk({"sample": 64}).to_zarr(root / f"{split}.zarr", zarr_format=2, consolidated=True)
    return root
