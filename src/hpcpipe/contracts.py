"""Data contracts between steps: what each store must hold (docs/data-contracts.md).

The steps check what they read with these functions, and the tests check what the steps
write with the same ones, in the spirit of ``xarray.testing``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr


class DatasetError(ValueError):
    """The dataset cannot serve the pipeline; the message names the file and what is wrong."""


def check_features(train: xr.Dataset, val: xr.Dataset, where: str | os.PathLike[str]) -> None:
    """The training and validation feature stores of ``where`` can train one model together."""
    from hpcpipe.store import decode_str

    for name in ("inputs", "targets", "mask"):
        if name not in train or name not in val:
            raise ValueError(f"features in {where} lack {name!r} (docs/data-contracts.md)")
    for coord in ("channel", "lead", "variable"):
        if decode_str(train[coord].values) != decode_str(val[coord].values):
            raise ValueError(f"{where}: train.zarr and val.zarr differ in {coord!r}")
    if train["inputs"].shape[-2:] != val["inputs"].shape[-2:]:
        raise ValueError(f"{where}: train.zarr and val.zarr have different grids")
