"""Forecast models on a lat-lon grid: the names and the grid rule, without torch.

Config validation imports this package and must stay fast, so torch lives in the
submodules: :mod:`hpcpipe.models.nets` (the networks, ``build_model``) and
:mod:`hpcpipe.models.files` (the ``model.pt`` file: write, load, predict).
"""

from __future__ import annotations

MODELS = ("cnn", "unet")


def unet_grid_problem(depth: int, n_lat: int, n_lon: int) -> str | None:
    """Why a U-Net of ``depth`` levels cannot run on an ``n_lat x n_lon`` grid, or None.

    Each level halves the grid, so both sizes must divide by ``2**depth``.
    """
    factor = 2**depth
    if n_lat % factor or n_lon % factor:
        return (
            f"needs a grid divisible by 2**{depth}={factor}, "
            f"but the grid is {n_lat} x {n_lon} (lat x lon)"
        )
    return None
