from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import zlib
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import hpcpipe
from hpcpipe import store
from hpcpipe.provenance import (
    ProvenanceError,
    check,
    checksum,
    describe,
    manifest_path,
    read_manifest,
    write_manifests,
)

NOW = dt.datetime.now(dt.UTC)


def make_chain(root: Path, started: dt.datetime = NOW) -> tuple[Path, Path, Path]:
    """external.nc -> raw.zarr (store written by hpcpipe) -> result.json."""
    root.mkdir(parents=True, exist_ok=True)
    ext = root / "external.nc"
    ext.write_bytes(b"netcdf bytes")
    raw = root / "raw.zarr"
    ds = xr.Dataset({"x": (("time", "lat"), np.arange(40, dtype="float32").reshape(10, 4))})
    store.write_store(ds, raw, {"time": 3})
    write_manifests("ingest", {"rename": {}}, [ext], [raw], started)
    result = root / "result.json"
    result.write_text('{"rmse": 1.0}')
    write_manifests("evaluate", {"headline_lead": 1}, [raw], [result], started)
    return ext, raw, result


def reference_checksum(path: Path) -> str:
    """The checksum the module docstring describes, computed here: sha256 of a file; of a
    directory, sha256 over `name:crc32` of each file (sorted; Snakemake's stamp left out)."""
    if path.is_file():
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.name != ".snakemake_timestamp")
    lines = "".join(
        f"{f.relative_to(path).as_posix()}:{zlib.crc32(f.read_bytes()):08x}\n" for f in files
    )
    return "dir-crc32-sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def git_state(src: Path) -> dict:
    """The commit of the checkout hpcpipe is imported from and whether tracked files changed
    (both None outside a git checkout, e.g. an installed wheel)."""

    def git(*args: str) -> str | None:
        proc = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def installed_versions() -> dict:
    """python and the recorded libraries as installed, each read two ways that must agree."""
    import dask
    import snakemake
    import torch
    import zarr

    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    for module in (np, dask, xr, zarr, torch, snakemake):
        name = module.__name__
        versions[name] = metadata.version(name)
        assert getattr(module, "__version__", versions[name]) == versions[name], name
    versions["cuda"] = torch.version.cuda  # torch is imported here, so it is recorded
    return versions


def manifest_keys() -> set[str]:
    return {
        "step", "params", "params_sha256", "inputs", "outputs", "hpcpipe", "libraries", "host",
        "slurm", "resources", "started", "ended",
    }  # fmt: skip


def params_hash(params: dict) -> str:
    """sha256 of the params as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(
        json.dumps(params, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def test_write_time_store_checksum_equals_a_fresh_read(tmp_path: Path):
    _, raw, _ = make_chain(tmp_path)
    recorded = store.WRITTEN[str(raw.resolve())]
    store.WRITTEN.clear()
    assert checksum(raw) == recorded


def _no_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)


def test_manifest_records_what_made_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Every field: step, params and their hash, checksums of inputs and outputs, hpcpipe
    version and git state, library versions, host, SLURM job, resources, start and end."""
    monkeypatch.chdir(tmp_path)
    _no_slurm(monkeypatch)
    versions = installed_versions()  # imports torch first: its CUDA version is recorded
    t0 = dt.datetime.now(dt.UTC)
    ext, raw, result = make_chain(Path("."), started=t0)
    params = {"b": [1, 2.5], "a": {"y": None, "x": "é"}}  # key order and non-ASCII: canonical
    store.WRITTEN.clear()  # a fresh read of raw.zarr below, not the write-time record
    both = [result, Path("copy.json")]
    both[1].write_text("other bytes")
    write_manifests(
        "evaluate", params, [ext, raw], both, t0, {"cpus": 3, "memory_gb": 1.5, "gpus": 0}
    )
    t1 = dt.datetime.now(dt.UTC)
    m = read_manifest(result)
    assert read_manifest(both[1]) == m  # one manifest per output, all alike
    assert set(m) == manifest_keys()
    assert m["step"] == "evaluate" and m["params"] == params
    assert m["params_sha256"] == params_hash(params)
    assert m["inputs"] == {
        "external.nc": reference_checksum(ext),
        "raw.zarr": reference_checksum(raw),
    }
    assert m["inputs"]["raw.zarr"] == read_manifest(raw)["outputs"]["raw.zarr"]
    assert m["outputs"] == {str(p): reference_checksum(p) for p in both}
    assert m["hpcpipe"] == {
        "version": hpcpipe.__version__,
        **git_state(Path(hpcpipe.__file__).parent),
    }
    assert m["libraries"] == versions
    assert m["host"] == socket.gethostname() == platform.node()
    assert m["slurm"] is None  # outside SLURM
    assert m["resources"] == {"cpus": 3, "memory_gb": 1.5, "gpus": 0}  # what the step was given
    assert read_manifest(raw)["resources"] is None  # none given, none recorded
    started, ended = (dt.datetime.fromisoformat(m[k]) for k in ("started", "ended"))
    assert m["started"] == t0.isoformat(timespec="seconds")
    assert t0.replace(microsecond=0) <= started <= ended <= t1, (t0, m["started"], m["ended"], t1)
    assert ended.utcoffset() == dt.timedelta(0)


def test_manifest_records_the_slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _no_slurm(monkeypatch)
    job = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_PARTITION": "gpu", "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_CPUS_PER_TASK": "8", "SLURM_MEM_PER_NODE": "16000", "SLURM_NTASKS": "2",
        "CUDA_VISIBLE_DEVICES": "0,1", "SLURM_RESTART_COUNT": "1",
        "SLURM_STEP_ID": "0",  # not a job variable: not recorded
    }  # fmt: skip
    for k, v in job.items():
        monkeypatch.setenv(k, v)
    Path("out.txt").write_text("x")
    m = write_manifests(
        "summary", {}, [], ["out.txt"], NOW, {"cpus": 8, "memory_gb": 16.78, "gpus": 2}
    )
    assert read_manifest("out.txt") == m
    assert m["slurm"] == {
        "job_id": "4242", "job_partition": "gpu", "job_nodelist": "n[1-2]",
        "cpus_per_task": "8", "mem_per_node": "16000", "ntasks": "2",
        "cuda_visible_devices": "0,1", "restart_count": "1",
    }  # fmt: skip
    assert m["resources"] == {"cpus": 8, "memory_gb": 16.78, "gpus": 2}
    assert "SLURM job 4242" in describe("out.txt")


def test_manifest_checksum_is_the_documented_one(tmp_path: Path):
    """provenance.checksum (which the workflow test uses) against the reference above."""
    _, raw, result = make_chain(tmp_path)
    (raw / ".snakemake_timestamp").write_text("stamp")  # Snakemake's, not content
    store.WRITTEN.clear()
    assert checksum(raw) == reference_checksum(raw) and checksum(result) == reference_checksum(
        result
    )


def test_manifest_chain_describes_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _, _, result = make_chain(Path("."))
    text = describe(result)
    assert "result.json  <- evaluate" in text and "raw.zarr  <- ingest" in text
    assert "external.nc  (no manifest: external input)" in text
    assert check(result) == []


def test_edited_output_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _, _, result = make_chain(Path("."))
    result.write_text('{"rmse": 0.5}')
    assert check(result) == [
        "result.json: content does not match its manifest (edited by hand or copied from elsewhere?)"
    ]


def test_edited_chunk_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _, raw, result = make_chain(Path("."))
    store.WRITTEN.clear()
    chunk = next(p for p in (raw / "x").iterdir() if not p.name.startswith("."))
    chunk.write_bytes(chunk.read_bytes()[::-1])
    assert any(p.startswith("raw.zarr: content does not match") for p in check(result))


def test_output_copied_from_another_run_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # result.json (with its manifest) from a run on other data, next to this run's raw.zarr
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        make_chain(Path("."))
    ds = xr.Dataset({"x": (("time", "lat"), np.ones((10, 4), dtype="float32"))})
    store.write_store(ds, "raw.zarr", {"time": 3})
    write_manifests("ingest", {}, ["external.nc"], ["raw.zarr"], NOW)
    shutil.copy(tmp_path / "a" / "result.json", "result.json")
    shutil.copy(manifest_path(tmp_path / "a" / "result.json"), manifest_path("result.json"))
    problems = check("result.json")
    assert len(problems) == 1 and problems[0].startswith(
        "result.json: made from raw.zarr with checksum"
    )


def test_missing_manifest_says_so(tmp_path: Path):
    f = tmp_path / "orphan.csv"
    f.write_text("a,b\n")
    with pytest.raises(ProvenanceError, match=r"orphan\.csv: no manifest"):
        check(f)
    assert describe(f).endswith("(no manifest: external input)")
