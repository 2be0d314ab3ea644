from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import re
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from workdir import make_workdir, planned_jobs, snakemake

import hpcpipe
from hpcpipe.provenance import checksum
from hpcpipe.sweep import runs_of_spec

pytestmark = pytest.mark.workflow

MODELS, SEEDS, VARIABLES, LEADS = ("cnn", "unet"), (0,), ("t2m", "z500"), (1, 2, 3)
FORECASTERS = ("model", "persistence", "climatology")
# The reference below reads the same float32 stores and works in float64, as the step does:
# only the order of the sums differs (~1e-15 relative).
BASELINE_RTOL = 1e-9
# The model's forecasts are float32 network outputs of a second predict() call here (other
# thread count than the step's): their last bits may differ (~1e-7 relative). And evaluate
# scores the stored forecasts: float32 physical values, each within eps32/2 * |x| of the
# float64 one (<= 1.8e-5 K for t2m near 300 K, 3.4e-4 m for z500 near 5700 m), which moves an
# RMSE by at most as much: <= 2e-5 of these RMSEs (above 0.9 K and 40 m), ACC less.
MODEL_RTOL = 5e-5
# The best model of the tiny run must beat persistence at lead 1 by at least this share of
# its RMSE (today: cnn by 21 % on t2m and 15 % on z500; unet does not beat it on t2m).
BEATS_PERSISTENCE_BY = 0.05


def test_whole_pipeline_outputs(pipeline_run: Path):
    r = pipeline_run / "results"
    for model in MODELS:
        m = json.loads((r / "eval" / model / "0" / "metrics.json").read_text())
        assert m["model"] == model and m["seed"] == 0 and m["headline_lead"] == 1
        assert m["variables"] == list(VARIABLES) and m["leads"] == list(LEADS)
        for score in ("rmse", "acc"):
            assert set(m[score]) == set(FORECASTERS)
            for forecaster in m[score].values():
                assert set(forecaster) == set(VARIABLES)
                assert all(
                    set(by_lead) == {str(ld) for ld in LEADS} for by_lead in forecaster.values()
                )
        for name in ("skill_vs_lead.png", "error_maps.png", "loss_curve.png", "metrics.csv"):
            assert (r / "eval" / model / "0" / name).stat().st_size > 1000
        hist = pd.read_csv(r / "models" / model / "0" / "history.csv")
        assert len(hist) >= 1 and hist["val_loss"].notna().all()
    feats = xr.open_zarr(r / "features" / "test.zarr")
    assert feats.sizes["lat"] == 16 and list(feats["lead"].values) == list(LEADS)
    for log in ("generate", "preprocess", "features", "thresholds", "summary"):
        assert (pipeline_run / "logs" / f"{log}.log").read_text().strip()


def reference_scores(results: Path, model: str, seed: int = 0) -> dict[str, dict]:
    """RMSE and ACC of the model, persistence and climatology, from the stores, with numpy.

    WeatherBench 2: per forecast time, the cos(lat)-weighted spatial MSE over valid points;
    RMSE = sqrt of its time mean. ACC = time mean of the weighted uncentred correlation of
    the anomalies against C(valid time). Physical units: x = a * std + mean + C(day of year).
    Persistence is the lag-0 input carried to every lead; climatology is C(valid time).
    """
    from hpcpipe.models.files import load_model, predict  # the model's forecasts, not scoring

    test = xr.open_zarr(results / "features" / "test.zarr").load()
    pre = xr.open_zarr(results / "preprocessed.zarr")
    stats = json.loads((results / "stats.json").read_text())["variables"]
    assert [str(v) for v in test["variable"].values] == list(VARIABLES)
    # (sample, lead, variable, lat, lon) broadcasting throughout
    mean = np.array([stats[v]["mean"] for v in VARIABLES])[None, None, :, None, None]
    std = np.array([stats[v]["std"] for v in VARIABLES])[None, None, :, None, None]
    clim = pre["climatology"].sel(variable=list(VARIABLES)).values.astype(np.float64)
    periods = [int(p) for p in pre["period"].values]
    assert pre["period"].attrs["kind"] == "dayofyear"

    def climatology_at(times: np.ndarray) -> np.ndarray:
        doy = pd.DatetimeIndex(times.ravel()).day_of_year
        return clim[[periods.index(d) for d in doy]].reshape(*times.shape, *clim.shape[1:])

    c_valid = climatology_at(test["valid_time"].values)
    c_init = climatology_at(test["time"].values)[:, None]
    channels = [str(c) for c in test["channel"].values]
    lag0 = test["inputs"].values[:, [channels.index(f"{v}_lag0") for v in VARIABLES]]
    obs = test["targets"].values.astype(np.float64) * std + mean + c_valid
    net, _ = load_model(results / "models" / model / str(seed) / "model.pt")
    pred = np.asarray(predict(net, test["inputs"].values, 64), dtype=np.float64)
    forecasts = {
        "model": pred * std + mean + c_valid,
        "persistence": lag0.astype(np.float64)[:, None] * std + mean + c_init,
        "climatology": c_valid,
    }
    mask = test["mask"].values.astype(bool)[None, None]
    w = np.cos(np.deg2rad(test["lat"].values))[:, None] * mask
    out: dict[str, dict] = {"rmse": {}, "acc": {}}
    for k, f in forecasts.items():
        f = np.broadcast_to(f, obs.shape)
        mse = (w * (f - obs) ** 2).sum((-2, -1)) / w.sum((-2, -1))  # (sample, lead, variable)
        fa, oa = f - c_valid, obs - c_valid
        if k == "climatology":  # zero anomaly: its ACC is 0/0, defined as 0
            acc = np.zeros_like(mse)
        else:
            den = np.sqrt((w * fa**2).sum((-2, -1)) * (w * oa**2).sum((-2, -1)))
            acc = (w * fa * oa).sum((-2, -1)) / den
        for score, values in (("rmse", np.sqrt(mse.mean(0))), ("acc", acc.mean(0))):
            out[score][k] = {
                v: {str(ld): float(values[i, j]) for i, ld in enumerate(LEADS)}
                for j, v in enumerate(VARIABLES)
            }
    return out


@pytest.fixture(scope="module")
def reference(pipeline_run: Path) -> dict[str, dict]:
    return {m: reference_scores(pipeline_run / "results", m) for m in MODELS}


def _metrics(pipeline_run: Path, model: str) -> dict:
    return json.loads(
        (pipeline_run / "results" / "eval" / model / "0" / "metrics.json").read_text()
    )


def test_metrics_are_the_wb2_scores_recomputed_from_the_stores(pipeline_run: Path, reference: dict):
    for model in MODELS:
        m = _metrics(pipeline_run, model)
        for score in ("rmse", "acc"):
            for k in FORECASTERS:
                rtol = MODEL_RTOL if k == "model" else BASELINE_RTOL
                for v in VARIABLES:
                    for ld in map(str, LEADS):
                        got, want = m[score][k][v][ld], reference[model][score][k][v][ld]
                        assert got == pytest.approx(want, rel=rtol, abs=0), (model, score, k, v, ld)
        lead = str(m["headline_lead"])
        rmse = reference[model]["rmse"]
        assert m["beats_baselines"] == {
            v: all(
                rmse["model"][v][lead] < rmse[b][v][lead] for b in ("persistence", "climatology")
            )
            for v in VARIABLES
        }


def test_the_best_model_beats_persistence_and_climatology_at_lead_1(reference: dict):
    for v in VARIABLES:
        persistence = reference["cnn"]["rmse"]["persistence"][v]["1"]
        best = min(reference[m]["rmse"]["model"][v]["1"] for m in MODELS)
        assert best < (1 - BEATS_PERSISTENCE_BY) * persistence, (v, best, persistence)
        for m in MODELS:  # every model beats climatology, and persistence degrades with lead
            rmse = reference[m]["rmse"]
            assert rmse["model"][v]["1"] < rmse["climatology"][v]["1"], (m, v)
            assert rmse["persistence"][v]["1"] < rmse["persistence"][v]["3"], v


def test_summary_rows_are_the_metrics_json_values(pipeline_run: Path):
    summary = pd.read_csv(pipeline_run / "results" / "summary.csv")
    assert sorted(zip(summary["model"], summary["seed"], summary["variable"], strict=True)) == [
        (m, s, v) for m in MODELS for s in SEEDS for v in VARIABLES
    ]
    for row in summary.to_dict("records"):
        m = _metrics(pipeline_run, row["model"])
        v, lead = row["variable"], str(m["headline_lead"])
        assert row["headline_lead"] == m["headline_lead"]
        want = {f"rmse_{k}": m["rmse"][k][v][lead] for k in FORECASTERS}
        want |= {f"acc_{k}": m["acc"][k][v][lead] for k in ("model", "persistence")}
        want["f1_model"] = m["extremes"]["model"][v]["f1"]
        for col, value in want.items():
            assert row[col] == pytest.approx(value, rel=1e-15, abs=0), (row, col)
        assert bool(row["beats_baselines"]) is m["beats_baselines"][v]


def test_every_output_has_provenance_that_checks_out(pipeline_run: Path):
    target = "results/eval/unet/0/metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "hpcpipe.cli", "provenance", target, "--check"],
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


def executed_jobs(workdir: Path) -> list[dict]:
    """The pipeline run's jobs as Snakemake's own log shows them: when each started and
    finished (Snakemake's clock, whole seconds) and its `hpcpipe` command."""
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    text = logs[0].read_text()  # the first: the pipeline run (later ones are dry runs)
    jobs: dict[int, dict] = {}
    stamp, job = None, None
    for line in text.splitlines():
        if re.fullmatch(r"\[\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4}\]", line):
            stamp = dt.datetime.strptime(line, "[%a %b %d %H:%M:%S %Y]").astimezone(dt.UTC)
        elif line.startswith("localrule "):
            job = {"start": stamp}
        elif line.startswith("    jobid: ") and job is not None:
            jobs[int(line.split(":")[1])] = job
        elif line.startswith("Shell command: hpcpipe ") and job is not None:
            argv = shlex.split(line.removeprefix("Shell command: "))
            # `hpcpipe launch -n N hpcpipe train ...`: the step is what runs in the ranks
            job["argv"] = argv[4:] if argv[1] == "launch" else argv
        elif m := re.fullmatch(r"Finished jobid: (\d+) \(Rule: \w+\)", line):
            jobs[int(m[1])]["end"] = stamp
    return [j for j in jobs.values() if "argv" in j]  # not the target rule `all`


def options(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in argv:
        if a.startswith("--"):
            out[a] = []
        else:
            out[list(out)[-1]].append(a)
    return out


def git_state(src: Path) -> dict:
    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def allocation_outside_slurm(threads: int | None) -> dict:
    """What a step may use on a laptop: Snakemake's threads (within the CPU affinity), the
    cgroup's memory limit else the host's memory, the GPUs made visible."""
    cpus = len(os.sched_getaffinity(0))
    memory = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        raw = Path(path).read_text().strip() if Path(path).exists() else ""
        if raw.isdigit() and int(raw) < 1 << 60:
            memory = int(raw)
            break
    memory = memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus = (
        len([d for d in visible.split(",") if d.strip() not in ("", "-1")])
        if visible is not None
        else len(list(Path("/dev").glob("nvidia[0-9]*")))
    )
    return {
        "cpus": min(threads, cpus) if threads else cpus,
        "memory_gb": round(memory / 1e9, 2),
        "gpus": gpus,
    }


def _seconds(path: Path) -> float:
    """When a file's content was last written (a store: its newest file but Snakemake's stamp)."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return max(f.stat().st_mtime for f in files if f.name != ".snakemake_timestamp")


def test_every_manifest_records_its_step(pipeline_run: Path, monkeypatch: pytest.MonkeyPatch):
    """Each job's manifest, field by field, against the command Snakemake ran, the files
    themselves (checksums computed now), this installation and this machine."""
    import torch

    monkeypatch.chdir(pipeline_run)
    now = dt.datetime.now(dt.UTC)
    began = dt.datetime.fromtimestamp(
        int((pipeline_run / "config" / "config.yaml").stat().st_mtime), dt.UTC
    )
    libraries = {"python": platform.python_version()} | {
        name: metadata.version(name)
        for name in ("numpy", "dask", "xarray", "zarr", "torch", "snakemake")
    }
    # The steps import the hpcpipe this test imports (same environment, same PYTHONPATH).
    # (A tracked file edited between the run and this line flips `dirty`: a true failure.)
    hpcpipe_info = {"version": hpcpipe.__version__, **git_state(Path(hpcpipe.__file__).parent)}
    jobs = executed_jobs(pipeline_run)
    steps = [j["argv"][1] for j in jobs]
    assert sorted(steps) == sorted(
        ["generate", "preprocess", "thresholds", "features", "train", "train", "predict", "predict",
         "evaluate", "evaluate", "summary", "usage-table"]
    )  # fmt: skip
    for job in jobs:
        step, opts = job["argv"][1], options(job["argv"][2:])
        paths = [
            p
            for k, vals in opts.items()
            if k not in ("--log", "--checkpoints")
            for p in vals
            if Path(p).exists()
        ]
        if "--metrics-pattern" in opts:  # the runs' metrics.json, as a spec and a pattern
            pattern = opts["--metrics-pattern"][0]
            paths += [r.path(pattern) for r in runs_of_spec(opts["--runs"][0])]
        m = next(
            m
            for p in paths
            if Path(p + ".manifest.json").exists()
            and (m := json.loads(Path(p + ".manifest.json").read_text()))["step"] == step
            and p in m["outputs"]
        )
        what = f"{step} {paths}"
        assert set(m) == {
            "step", "params", "params_sha256", "inputs", "outputs", "hpcpipe", "libraries", "host",
            "slurm", "resources", "started", "ended", "rule", "wildcards", "usage", "requested",
        }, what  # fmt: skip
        assert m["rule"] == step.replace("-", "_"), what
        if "--mem-mb" in opts:  # the local usage table declares no resources
            assert m["requested"]["mem_mb"] == int(opts["--mem-mb"][0]), what
            assert m["requested"]["runtime_min"] == int(opts["--runtime"][0]), what
        assert m["usage"]["cpu_s"] > 0 and 50 < m["usage"]["peak_rss_mb"] < 4000, what
        # a bound against a runaway sampler; its share is measured by scripts/bench usage
        assert m["usage"]["meter_cpu_s"] < 0.05 * m["usage"]["wall_s"], what
        assert sorted([*m["inputs"], *m["outputs"]]) == sorted(paths), what
        for out in m["outputs"]:
            assert json.loads(Path(out + ".manifest.json").read_text()) == m, out
            assert m["outputs"][out] == checksum(out), out
        for inp, recorded in m["inputs"].items():
            assert recorded == checksum(inp), (what, inp)
            if Path(inp + ".manifest.json").exists():
                made = json.loads(Path(inp + ".manifest.json").read_text())
                assert made["outputs"][inp] == recorded, (what, inp)
                assert made["ended"] <= m["started"], (what, inp)  # made before it was read
        params = json.loads(opts["--params"][0]) if "--params" in opts else {}
        assert m["params"] == params, what
        canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
        assert m["params_sha256"] == hashlib.sha256(canonical.encode()).hexdigest(), what
        assert m["hpcpipe"] == hpcpipe_info, what
        cuda = torch.version.cuda if step in ("train", "predict") else None  # steps with torch
        assert m["libraries"] == libraries | {"cuda": cuda}, what
        assert m["host"] == socket.gethostname(), what
        if "SLURM_JOB_ID" in os.environ:  # the tests themselves run in a SLURM job
            assert m["slurm"]["job_id"] == os.environ["SLURM_JOB_ID"], what
        else:
            assert m["slurm"] is None, what
            # summary is given no --threads: it may use every CPU of the machine
            threads = int(opts["--threads"][0]) if "--threads" in opts else None
            assert m["resources"] == allocation_outside_slurm(threads), what
        started, ended = (dt.datetime.fromisoformat(m[k]) for k in ("started", "ended"))
        # within the job, as Snakemake timed it, and within this test session's run
        assert began <= job["start"] <= started <= ended <= job["end"] <= now, (what, job, m)
        for out in m["outputs"]:
            # written after the start (Snakemake touches outputs after the job: no upper bound)
            assert started.timestamp() <= _seconds(Path(out)), out
            # the manifest itself is written at its end (times in whole seconds; a few
            # seconds of slack for a machine loaded by other jobs)
            written = Path(out + ".manifest.json").stat().st_mtime
            assert ended.timestamp() <= written < ended.timestamp() + 5, out


def test_noop_rerun_plans_nothing(pipeline_run: Path):
    assert planned_jobs(pipeline_run) == {}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"evaluate": {"extreme_quantile": 0.8}},
            {"thresholds": 1, "evaluate": 2, "summary": 1, "usage_table": 1, "all": 1},
        ),
        (
            {"models": {"unet": {"channels": 4}}},
            {"train": 1, "predict": 1, "evaluate": 1, "summary": 1, "usage_table": 1, "all": 1},
        ),
        ({"report": {"title": "x"}}, {"summary": 1, "usage_table": 1, "all": 1}),
        (
            {"preprocess": {"climatology_window": 15}},
            {
                "preprocess": 1,
                "thresholds": 1,
                "features": 1,
                "train": 2,
                "predict": 2,
                "evaluate": 2,
                "summary": 1,
                "usage_table": 1,
                "all": 1,
            },
        ),
        (
            {"features": {"lags": [0, 2]}},
            {
                "features": 1,
                "train": 2,
                "predict": 2,
                "evaluate": 2,
                "summary": 1,
                "usage_table": 1,
                "all": 1,
            },
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
