"""Longitudes: global or regional, boxes across 0 degrees kept contiguous, cyclic points,
and what a regional grid changes downstream (gradients, model padding)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import xarray as xr

from hpcpipe.contracts import DatasetError
from hpcpipe.grid import gradient_x, is_global, normalise_lon


def _ds(lon: np.ndarray) -> xr.Dataset:
    return xr.Dataset({"x": ("lon", np.arange(lon.size, dtype="float32"))}, coords={"lon": lon})


@pytest.mark.parametrize("first", [0.0, -180.0])
def test_a_cyclic_point_is_dropped_in_either_frame(first: float, caplog):
    lon = first + np.arange(17) * 22.5  # 16 columns and the first again, 360 on
    logger = logging.getLogger("hpcpipe.grid")
    logger.addHandler(caplog.handler)  # the hpcpipe loggers may not propagate (logs.setup)
    try:
        with caplog.at_level(logging.INFO, logger="hpcpipe.grid"):
            out = normalise_lon(_ds(lon), "f.nc")
    finally:
        logger.removeHandler(caplog.handler)
    assert out.sizes["lon"] == 16 and out.attrs["grid"] == "global"
    np.testing.assert_allclose(out["lon"], np.arange(16) * 22.5)
    assert "cyclic point" in caplog.text


def test_a_box_across_zero_stays_contiguous():
    lon = np.concatenate([np.arange(0, 42.5, 2.5), np.arange(280, 360, 2.5)])  # 0..40, 280..357.5
    out = normalise_lon(_ds(lon), "f.nc")
    assert out.attrs["grid"] == "regional"
    np.testing.assert_allclose(out["lon"], np.arange(-80, 42.5, 2.5))


def test_a_box_across_180_keeps_its_frame():
    lon = np.concatenate([np.arange(150, 180, 5.0), np.arange(-180, -145, 5.0)])
    out = normalise_lon(_ds(lon), "f.nc")
    np.testing.assert_allclose(out["lon"], np.arange(150, 215, 5.0))


def test_longitudes_spanning_more_than_360_degrees_are_refused():
    with pytest.raises(DatasetError, match="more than 360 degrees"):
        normalise_lon(_ds(np.arange(0, 400, 10.0)), "f.nc")


def test_global_or_regional():
    assert is_global(np.arange(64) * 5.625) and is_global(np.arange(-180, 180, 2.5))
    assert not is_global(np.arange(-80, 42.5, 2.5))


def test_regional_gradients_are_one_sided_at_the_edges():
    x = np.arange(6.0)[None, :] ** 2
    periodic, regional = gradient_x(x, True), gradient_x(x, False)
    assert periodic[0, 0] == 0.5 * (1 - 25)  # wraps from the east edge to the west
    assert regional[0, 0] == 1 and regional[0, -1] == 25 - 16  # one-sided
    np.testing.assert_array_equal(periodic[0, 1:-1], regional[0, 1:-1])


def test_models_pad_a_regional_grid_with_zeros():
    import torch

    from hpcpipe.models.nets import PeriodicConv2d

    x = torch.zeros(1, 1, 4, 8)
    x[..., -1] = 1.0  # only the east edge
    for periodic in (True, False):
        torch.manual_seed(0)
        conv = PeriodicConv2d(1, 1, 3, periodic=periodic)
        with torch.no_grad():
            west = conv(x)[..., 0] - conv(torch.zeros_like(x))[..., 0]
        assert bool(west.abs().max() > 0) == periodic  # only a global grid wraps round
