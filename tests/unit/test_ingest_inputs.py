"""Datasets as scientists bring them: levels, groups, cyclic points, boxes, odd times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from realistic import daily_levels, yearly_ocean_box, z500_box_across_zero

from hpcpipe.contracts import DatasetError, check_raw
from hpcpipe.ingest import ingest


def _params(overlay: dict) -> dict:
    ing = overlay["ingest"]
    return {
        "variables": overlay["dataset"]["variables"],
        "rename": ing.get("rename", {}),
        "select": ing.get("select", {}),
        "group": ing.get("group"),
        "split": overlay["preprocess"]["split"],
        "lags": [0, 1],
        "leads": [1],
    }


def test_yearly_seasonal_means_on_a_regional_box(tmp_path: Path):
    out = ingest(yearly_ocean_box(tmp_path)["ingest"]["path"], _params(yearly_ocean_box(tmp_path)))
    axis = check_raw(out)
    assert (axis.resolution, out.attrs["grid"]) == ("yearly", "regional")
    assert out.attrs["time_resolution"] == "yearly"
    assert np.isnan(out["sst"].values[:, :2, :3]).all()


def test_a_z500_box_across_zero_with_a_singleton_level_and_bounds(tmp_path: Path):
    overlay = z500_box_across_zero(tmp_path)
    out = ingest(overlay["ingest"]["path"], _params(overlay)).load()
    assert list(out.data_vars) == ["z500"] and out["z500"].dims == ("time", "lat", "lon")
    np.testing.assert_allclose(out["lon"], np.arange(16) * 5.0 - 40)  # contiguous across 0
    assert out.attrs["grid"] == "regional" and float(out.lat[0]) < float(out.lat[-1])


def test_ingest_select_picks_a_level(tmp_path: Path):
    overlay = daily_levels(tmp_path)
    src = xr.open_dataset(overlay["ingest"]["path"])
    out = ingest(overlay["ingest"]["path"], _params(overlay)).load()
    np.testing.assert_allclose(
        out["z"].values, src["z"].sel(level=500).values[:, :, np.r_[8:16, 0:8]]
    )
    bad = _params(overlay) | {"select": {"level": 300}}
    with pytest.raises(DatasetError, match=r"ingest.select.level: 300 is not one of"):
        ingest(overlay["ingest"]["path"], bad)
    without = _params(overlay) | {"select": {}}
    with pytest.raises(DatasetError, match=r"pick one with ingest.select"):
        ingest(overlay["ingest"]["path"], without)


def test_variables_in_a_netcdf4_group(tmp_path: Path):
    overlay = daily_levels(tmp_path)
    src = xr.open_dataset(overlay["ingest"]["path"]).sel(level=500)
    path = tmp_path / "grouped.nc"
    xr.Dataset(attrs={"title": "root"}).to_netcdf(path)
    src.to_netcdf(path, group="forecast", mode="a")
    params = _params(overlay) | {"select": {}}
    with pytest.raises(
        DatasetError, match=r"groups \['forecast'\]; name the group with ingest.group"
    ):
        ingest(str(path), params)
    assert ingest(str(path), params | {"group": "forecast"}).sizes["lon"] == 16


def test_integer_times_without_units_name_the_time_variable(tmp_path: Path):
    overlay = daily_levels(tmp_path)
    src = xr.open_dataset(overlay["ingest"]["path"])
    path = tmp_path / "ints.nc"
    src.assign_coords(time=np.arange(src.sizes["time"])).to_netcdf(path)
    with pytest.raises(DatasetError, match=r"ints.nc: time variable 'time' holds int64 values"):
        ingest(str(path), _params(overlay))


def test_infinite_values_fail_the_ingest_naming_the_variable_and_time(tmp_path: Path):
    overlay = daily_levels(tmp_path)
    src = xr.open_dataset(overlay["ingest"]["path"]).load()
    src["z"][400, 1, 2, 3] = np.inf
    path = tmp_path / "inf.nc"
    src.to_netcdf(path)
    out = ingest(str(path), _params(overlay))  # the first steps are fine: found while reading
    with pytest.raises(
        DatasetError, match=r"variable 'z' holds infinite values \(first at time 2001-02-04"
    ):
        out.load()
