"""The whole pipeline on generated files shaped like real datasets (tests/realistic.py).

Two run to the summary: yearly seasonal means on a regional ocean box (land as NaN,
ascending latitude), and 6-hourly global data with a diurnal cycle and a cyclic point, whose
climatology baseline must not carry the diurnal cycle. The others stop where what they test
is written (each job costs a process start): a 500 hPa box across 0 degrees with a singleton
level and bounds variables at the feature stores, monthly noleap data at the preprocessed
store, a level picked with ingest.select at the raw store. Two at a time, one core each.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from realistic import MAKERS
from workdir import deep_update, make_workdir, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

FULL = ("yearly_ocean_box", "six_hourly_diurnal")
TARGETS = {
    "z500_box_across_zero": "results/features/test.zarr",
    "monthly_noleap": "results/stats.json",
    "daily_levels": "data/raw.zarr",
}
TINY = {"train": {"models": ["cnn"], "epochs": 1}, "features": {"leads": [1]}}
DIURNAL_AMPLITUDE = 3.0  # K, six_hourly_diurnal's default


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    def run(name: str) -> tuple[str, Path]:
        base = tmp_path_factory.mktemp(name)
        (base / "src").mkdir()
        overlay = deep_update(MAKERS[name](base / "src"), TINY)
        wd = make_workdir(base / "wd", overlay)
        snakemake(wd, "--cores", "1", *([TARGETS[name]] if name in TARGETS else []))
        return name, wd

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, FULL + tuple(TARGETS)))


def _attrs(wd: Path) -> dict:
    return dict(xr.open_zarr(wd / "data" / "raw.zarr").attrs)


def test_stores_record_frequency_and_grid(runs: dict[str, Path]):
    want = {
        "yearly_ocean_box": ("yearly", "regional", "mean"),
        "six_hourly_diurnal": ("subdaily", "global", "hour_dayofyear"),
        "z500_box_across_zero": ("yearly", "regional", "mean"),
        "monthly_noleap": ("monthly", "global", "month"),
        "daily_levels": ("daily", "global", "dayofyear"),
    }
    for name, (resolution, grid, climatology) in want.items():
        wd = runs[name]
        raw = _attrs(wd)
        assert (raw["time_resolution"], raw["grid"]) == (resolution, grid), name
        if TARGETS.get(name) == "data/raw.zarr":
            continue
        stats = json.loads((wd / "results" / "stats.json").read_text())
        assert (stats["time_resolution"], stats["grid_kind"]) == (resolution, grid), name
        assert stats["climatology"] == climatology, name
        if name != "monthly_noleap":
            test = xr.open_zarr(wd / "results" / "features" / "test.zarr")
            assert test.attrs["grid"] == grid, name


def test_boxes_stay_contiguous_and_levels_are_picked(runs: dict[str, Path]):
    box = xr.open_zarr(runs["z500_box_across_zero"] / "data" / "raw.zarr")
    np.testing.assert_allclose(box["lon"], np.arange(16) * 5.0 - 40)
    assert box["z500"].dims == ("time", "lat", "lon") and float(box.lat[0]) < float(box.lat[-1])
    six = xr.open_zarr(runs["six_hourly_diurnal"] / "data" / "raw.zarr")
    assert six.sizes["lon"] == 16  # the cyclic point dropped
    levels = xr.open_zarr(runs["daily_levels"] / "data" / "raw.zarr")
    assert levels["z"].dims == ("time", "lat", "lon")
    monthly = xr.open_zarr(runs["monthly_noleap"] / "data" / "raw.zarr")
    assert monthly.indexes["time"].calendar == "noleap"


def test_the_regional_box_with_a_land_mask_is_scored(runs: dict[str, Path]):
    wd = runs["yearly_ocean_box"]
    summary = pd.read_csv(wd / "results" / "summary.csv")
    assert summary["rmse_model"].notna().all() and summary["rmse_climatology"].notna().all()
    mask = xr.open_zarr(wd / "results" / "features" / "test.zarr")["mask"].values
    assert not mask[0, :2, :3].any() and mask.sum() == 8 * 16 - 6
    assert (wd / "results" / "eval" / "cnn" / "0" / "error_maps.png").stat().st_size > 1000


def test_a_file_replaced_with_its_old_mtime_reruns_ingest(runs: dict[str, Path]):
    wd = runs["yearly_ocean_box"]
    assert planned_jobs(wd) == {}
    src = Path(yaml.safe_load((wd / "config" / "config.yaml").read_text())["ingest"]["path"])
    st = src.stat()
    with xr.open_dataset(src) as f:
        ds = f.load()
    (ds + 1).to_netcdf(src)  # other content, the same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime (cp -p, rsync -t)
    assert planned_jobs(wd).get("ingest") == 1


def test_the_sub_daily_climatology_has_no_diurnal_cycle_left(runs: dict[str, Path]):
    """Per hour of day x day of year, the climatology holds the diurnal cycle: its RMSE is
    the weather's, far below the cycle's (a day-of-year climatology gives 0.72 x amplitude)."""
    summary = pd.read_csv(runs["six_hourly_diurnal"] / "results" / "summary.csv")
    rmse = float(summary["rmse_climatology"].iloc[0])
    assert rmse < 0.3 * DIURNAL_AMPLITUDE, rmse
    assert float(summary["rmse_model"].iloc[0]) < rmse


def test_a_constant_field_after_a_new_ingest_keeps_the_previous_results(runs: dict[str, Path]):
    """The check between ingest and preprocess (rule check_raw) refuses a training period
    that the plan could not check (the raw store was stale): preprocess never starts, so
    Snakemake never removes the previous preprocessed store."""
    wd = runs["monthly_noleap"]
    config = yaml.safe_load((wd / "config" / "config.yaml").read_text())
    src, var = Path(config["ingest"]["path"]), config["dataset"]["variables"][0]
    before = xr.open_zarr(wd / "results" / "preprocessed.zarr").load()
    with xr.open_dataset(src) as f:
        ds = f.load()
    ds[var][:] = 1.0
    ds.to_netcdf(src)
    proc = snakemake(wd, "--cores", "1", TARGETS["monthly_noleap"], check=False)
    assert proc.returncode != 0
    assert f"variable {var!r} is constant over the training period" in proc.stdout + proc.stderr
    assert "rule preprocess" not in proc.stdout + proc.stderr
    xr.testing.assert_identical(xr.open_zarr(wd / "results" / "preprocessed.zarr").load(), before)
