from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from testdata import make_raw

from hpcpipe.contracts import DatasetError, check_raw
from hpcpipe.ingest import ingest

LAGS, LEADS = [0, 1], [1, 2]


def params(split: dict, **kw) -> dict:
    return {
        "variables": ["t2m", "z500"],
        "rename": {},
        "split": split,
        "lags": LAGS,
        "leads": LEADS,
        **kw,
    }


def test_era5_style_netcdf_is_canonicalised(tmp_path: Path, raw: xr.Dataset, split: dict):
    # ERA5 style: other names, descending latitude, longitudes in [-180, 180), float64.
    src = raw.rename(time="valid_time", lat="latitude", lon="longitude", t2m="2t").astype("float64")
    src = src.isel(latitude=slice(None, None, -1))
    src = src.assign_coords(longitude=((src.longitude + 180) % 360) - 180).sortby("longitude")
    path = tmp_path / "era5.nc"
    src.to_netcdf(path)
    rename = {"time": "valid_time", "lat": "latitude", "lon": "longitude", "t2m": "2t"}
    out = ingest(str(path), params(split, rename=rename)).load()
    check_raw(out)  # float32 (time, lat, lon), lat and lon ascending, lon from 0
    xr.testing.assert_allclose(out["t2m"], raw["t2m"], rtol=1e-6)
    xr.testing.assert_allclose(out["z500"], raw["z500"], rtol=1e-6)


def test_cftime_calendar_zarr_with_nan_mask(tmp_path: Path, split: dict):
    src = make_raw(calendar="noleap")
    src["t2m"][:, :2, :3] = np.nan  # land
    path = tmp_path / "noleap.zarr"
    src.to_zarr(path, zarr_format=2)
    out = ingest(str(path), params(split))
    assert (
        isinstance(out.indexes["time"], xr.CFTimeIndex) and out.indexes["time"].calendar == "noleap"
    )
    assert np.isnan(out["t2m"].values[:, :2, :3]).all()


@pytest.mark.parametrize(
    ("breaks", "message"),
    [
        (lambda d: d.drop_vars("z500"), "variable(s) ['z500'] not found"),
        (lambda d: d.rename(time="t"), "no dimension 'time'"),
        (lambda d: d.isel(time=slice(0, 1)), "only 1 time step"),
        (lambda d: d.isel(time=slice(0, 370)), "contains no time step"),
        (lambda d: d.isel(time=[0, 1, 1, 2] + list(range(3, 500))), "duplicated time"),
        (
            lambda d: d.isel(time=list(range(0, 200)) + list(range(202, 548))),
            "the first at 2000-07-19",
        ),
        (lambda d: d.assign(z500=d.z500 * np.nan), "all NaN"),
        (
            lambda d: d.assign(z500=d.z500.expand_dims(level=[500, 850], axis=1)),
            "extra dimension 'level'",
        ),
    ],
)
def test_unusable_datasets_name_the_problem(
    tmp_path: Path, raw: xr.Dataset, split: dict, breaks, message: str
):
    path = tmp_path / "bad.nc"
    breaks(raw).to_netcdf(path)
    with pytest.raises(DatasetError) as err:
        ingest(str(path), params(split))
    assert message in str(err.value) and str(path) in str(err.value)


def test_too_few_steps_for_lags_and_leads(tmp_path: Path, raw: xr.Dataset):
    path = tmp_path / "short.nc"
    raw.to_netcdf(path)
    split = {
        "train": ["2000-01-01", "2000-12-31"],
        "val": ["2001-01-01", "2001-01-02"],
        "test": ["2001-01-03", "2001-06-30"],
    }
    with pytest.raises(
        DatasetError, match=r"split .val. \(preprocess.split.val\) has 2 time steps, too few"
    ):
        ingest(str(path), params(split))


def test_missing_empty_and_truncated_files(tmp_path: Path, raw: xr.Dataset, split: dict):
    with pytest.raises(DatasetError, match="no such file"):
        ingest(str(tmp_path / "nope.nc"), params(split))
    empty = tmp_path / "empty.nc"
    empty.write_bytes(b"CDF\x01" + b"\x00" * 28)
    with pytest.raises(DatasetError, match="no data variables"):
        ingest(str(empty), params(split))
    good = tmp_path / "good.nc"
    raw.to_netcdf(good)
    bad = tmp_path / "truncated.nc"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match=r"truncated\.nc"):
        ingest(str(bad), params(split)).load()


def test_unsorted_time_is_sorted(tmp_path: Path, raw: xr.Dataset, split: dict):
    path = tmp_path / "unsorted.nc"
    raw.isel(time=np.r_[5:548, 0:5]).to_netcdf(path)
    out = ingest(str(path), params(split))
    assert out.indexes["time"].is_monotonic_increasing


def ingest_cli(src: Path, out: Path) -> subprocess.CompletedProcess:
    """`hpcpipe ingest` with the params the workflow's rule passes (variables and rename only).

    Run by this interpreter (`python -m hpcpipe.cli`), so that it is the code under test, not
    whichever `hpcpipe` script PATH holds, if any."""
    params = json.dumps({"variables": ["t2m", "z500"], "rename": {}})
    cli = [sys.executable, "-m", "hpcpipe.cli", "ingest"]
    return subprocess.run(
        [*cli, "--params", params, "--input", str(src), "--output", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip


def test_corrupt_zarr_chunk_names_the_file_and_keeps_no_output(
    tmp_path: Path, raw: xr.Dataset, split: dict
):
    src = tmp_path / "src.zarr"
    raw.chunk(time=100).to_zarr(src, zarr_format=2)
    chunk = sorted((src / "z500").glob("[0-9]*"))[1]
    chunk.write_bytes(b"\x00garbage" * 7)
    out = tmp_path / "raw.zarr"
    proc = ingest_cli(src, out)
    assert proc.returncode == 1
    assert f"{src}: reading the data failed" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".raw.zarr*"))


def test_cli_ingest_with_the_rules_params(tmp_path: Path, raw: xr.Dataset):
    """The rule passes only variables and rename (split/lags/leads are checked beforehand)."""
    src = tmp_path / "src.nc"
    raw.isel(lat=slice(None, None, -1)).to_netcdf(src)
    out = tmp_path / "raw.zarr"
    proc = ingest_cli(src, out)
    assert proc.returncode == 0, proc.stderr
    xr.testing.assert_allclose(xr.open_zarr(out)["t2m"].reset_coords(drop=True), raw["t2m"])
    assert (tmp_path / "raw.zarr.manifest.json").exists()


def test_yearly_files_are_joined_in_time(tmp_path: Path, raw: xr.Dataset, split: dict):
    """ingest.path as a list (ERA5 comes in yearly files), given out of order: sorted."""
    files = [tmp_path / "y2001.nc", tmp_path / "y2000.nc"]
    raw.isel(time=slice(366, None)).to_netcdf(files[0])
    raw.isel(time=slice(0, 366)).to_netcdf(files[1])
    out = ingest([str(f) for f in files], params(split))
    xr.testing.assert_allclose(out["z500"].load(), raw["z500"])
