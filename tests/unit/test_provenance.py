from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

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


def make_chain(root: Path) -> tuple[Path, Path, Path]:
    """external.nc -> raw.zarr (store written by hpcpipe) -> result.json."""
    root.mkdir(parents=True, exist_ok=True)
    ext = root / "external.nc"
    ext.write_bytes(b"netcdf bytes")
    raw = root / "raw.zarr"
    ds = xr.Dataset({"x": (("time", "lat"), np.arange(40, dtype="float32").reshape(10, 4))})
    store.write_store(ds, raw, {"time": 3})
    write_manifests("ingest", {"rename": {}}, [ext], [raw], NOW)
    result = root / "result.json"
    result.write_text('{"rmse": 1.0}')
    write_manifests("evaluate", {"headline_lead": 1}, [raw], [result], NOW)
    return ext, raw, result


def test_write_time_store_checksum_equals_a_fresh_read(tmp_path: Path):
    _, raw, _ = make_chain(tmp_path)
    recorded = store.WRITTEN[str(raw.resolve())]
    store.WRITTEN.clear()
    assert checksum(raw) == recorded


def test_manifest_records_what_made_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _, raw, result = make_chain(Path("."))
    m = read_manifest(result)
    assert m["step"] == "evaluate" and m["params"] == {"headline_lead": 1}
    assert m["inputs"] == {"raw.zarr": read_manifest(raw)["outputs"]["raw.zarr"]}
    assert set(m["libraries"]) >= {"python", "numpy", "dask", "xarray", "zarr", "torch"}
    assert m["hpcpipe"]["version"] and "commit" in m["hpcpipe"] and m["host"]
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
