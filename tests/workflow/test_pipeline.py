from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr
import yaml
from workdir import make_workdir, planned_jobs, snakemake

pytestmark = pytest.mark.workflow


def test_whole_pipeline_outputs(pipeline_run: Path):
    r = pipeline_run / "results"
    for model in ("cnn", "unet"):
        m = json.loads((r / "eval" / model / "0" / "metrics.json").read_text())
        assert set(m["rmse"]) == {"model", "persistence", "climatology"}
        for forecaster in m["rmse"].values():
            assert set(forecaster) == {"t2m", "z500"}
            assert all(v > 0 for v in forecaster["t2m"].values())
        for name in ("skill_vs_lead.png", "error_maps.png", "loss_curve.png", "metrics.csv"):
            assert (r / "eval" / model / "0" / name).stat().st_size > 1000
        hist = pd.read_csv(r / "models" / model / "0" / "history.csv")
        assert len(hist) >= 1 and hist["val_loss"].notna().all()
    summary = pd.read_csv(r / "summary.csv")
    assert {"cnn", "unet"} <= set(summary["model"])
    feats = xr.open_zarr(r / "features" / "test.zarr")
    assert feats.sizes["lat"] == 16 and list(feats["lead"].values) == [1, 2, 3]
    for log in ("generate", "preprocess", "features", "thresholds", "summary"):
        assert (pipeline_run / "logs" / f"{log}.log").read_text().strip()


def test_every_output_has_provenance_that_checks_out(pipeline_run: Path):
    import subprocess

    target = "results/eval/unet/0/metrics.json"
    proc = subprocess.run(
        ["hpcpipe", "provenance", target, "--check"],
        cwd=pipeline_run,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "data/raw.zarr  <- generate" in proc.stdout
        and "every output in the chain matches" in proc.stdout
    )
    assert (
        "results/models/unet/0/model.pt  <- train"
        in (pipeline_run / "results/provenance.txt").read_text()
    )


def test_noop_rerun_plans_nothing(pipeline_run: Path):
    assert planned_jobs(pipeline_run) == {}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"evaluate": {"extreme_quantile": 0.8}},
            {"thresholds": 1, "evaluate": 2, "summary": 1, "all": 1},
        ),
        (
            {"models": {"unet": {"channels": 4}}},
            {"train": 1, "evaluate": 1, "summary": 1, "all": 1},
        ),
        ({"report": {"title": "x"}}, {"summary": 1, "all": 1}),
        (
            {"preprocess": {"climatology_window": 15}},
            {
                "preprocess": 1,
                "thresholds": 1,
                "features": 1,
                "train": 2,
                "evaluate": 2,
                "summary": 1,
                "all": 1,
            },
        ),
        (
            {"features": {"lags": [0, 2]}},
            {"features": 1, "train": 2, "evaluate": 2, "summary": 1, "all": 1},
        ),
    ],
)
def test_a_changed_setting_reruns_only_what_depends_on_it(
    pipeline_run: Path, override: dict, expected: dict
):
    # A config overlay, the way users change a setting (--config turns nested values into strings).
    overlay = pipeline_run / f"overlay-{abs(hash(json.dumps(override, sort_keys=True)))}.yaml"
    overlay.write_text(yaml.safe_dump(override))
    assert (
        planned_jobs(pipeline_run, "--configfile", "config/config.yaml", str(overlay)) == expected
    )


def test_bad_config_stops_before_any_job(tmp_path: Path):
    wd = make_workdir(tmp_path, {"train": {"epochs": -1}})
    proc = snakemake(wd, check=False)
    assert proc.returncode != 0
    assert "train.epochs: -1 is less than the minimum of 1" in proc.stderr + proc.stdout
    assert not (wd / "data").exists() and not (wd / "results").exists()


def test_a_dataset_that_cannot_serve_stops_before_any_job(tmp_path: Path):
    from testdata import make_raw

    src = tmp_path / "mine.nc"
    make_raw().drop_vars("z500").to_netcdf(src)
    wd = make_workdir(
        tmp_path / "wd",
        {
            "dataset": {"source": "file"},
            "ingest": {"path": str(src)},
            "preprocess": {
                "split": {
                    "train": ["2000-01-01", "2000-12-31"],
                    "val": ["2001-01-01", "2001-03-31"],
                    "test": ["2001-04-01", "2001-06-30"],
                }
            },
        },
    )
    proc = snakemake(wd, check=False)
    assert proc.returncode != 0
    assert f"{src}: variable(s) ['z500'] not found" in proc.stderr + proc.stdout
    assert not (wd / "data").exists()


def test_whole_pipeline_on_your_own_netcdf(tmp_path: Path):
    """ERA5-style names, descending latitude, longitudes in [-180, 180), a noleap calendar."""
    from testdata import make_raw

    src = make_raw(calendar="noleap").rename(
        time="valid_time", lat="latitude", lon="longitude", t2m="2t"
    )
    src = src.isel(latitude=slice(None, None, -1))
    src = src.assign_coords(longitude=((src.longitude + 180) % 360) - 180).sortby("longitude")
    path = tmp_path / "era5.nc"
    src.to_netcdf(path)
    wd = make_workdir(
        tmp_path / "wd",
        {
            "dataset": {"source": "file"},
            "ingest": {
                "path": str(path),
                "rename": {
                    "time": "valid_time",
                    "lat": "latitude",
                    "lon": "longitude",
                    "t2m": "2t",
                },
            },
            "preprocess": {
                "split": {
                    "train": ["2000-01-01", "2000-12-31"],
                    "val": ["2001-01-01", "2001-03-31"],
                    "test": ["2001-04-01", "2001-06-30"],
                }
            },
        },
    )
    snakemake(wd)
    summary = pd.read_csv(wd / "results" / "summary.csv")
    assert set(summary["variable"]) == {"t2m", "z500"} and summary["rmse_model"].notna().all()
    raw = xr.open_zarr(wd / "data" / "raw.zarr")
    assert raw.indexes["time"].calendar == "noleap" and float(raw.lat[0]) < 0
    assert "hpcpipe ingest" in (wd / "logs" / "ingest.log").read_text()
