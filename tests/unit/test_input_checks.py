"""Checks before any job that are not the corpus's overlays: the Dask runtime's environment,
`hpcpipe provenance` on a missing path, the input fingerprint, the hour-of-day climatology."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from hpcpipe import cli
from hpcpipe.fingerprint import VERIFIED, records, tokens
from hpcpipe.preprocess import climatology
from hpcpipe.runtime.dask.common import DaskClusterError
from hpcpipe.runtime.dask.settings import check_environment


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"HPCPIPE_DASK_MODE": "bogus"}, "unknown Dask mode 'bogus' (HPCPIPE_DASK_MODE)"),
        ({"HPCPIPE_DASK_TIMEOUT": "-1"}, "'-1' (HPCPIPE_DASK_TIMEOUT) is not a positive number"),
        ({"HPCPIPE_DASK": "{mode: local"}, "HPCPIPE_DASK is not valid JSON"),
        ({"HPCPIPE_DASK": json.dumps({"mode": "nope"})}, "unknown Dask mode 'nope'"),
    ],
)
def test_the_dask_environment_is_checked_naming_the_variable(environ: dict, message: str):
    with pytest.raises((ValueError, DaskClusterError)) as err:
        check_environment({}, environ)
    assert message in str(err.value)


def test_a_refusing_scheduler_address_fails_at_once():
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        environ = {
            "HPCPIPE_DASK_MODE": "address",
            "HPCPIPE_DASK_ADDRESS": f"tcp://127.0.0.1:{port}",
        }
        with pytest.raises(DaskClusterError, match="refuses connections"):
            check_environment({"timeout": 600}, environ)


def test_provenance_of_a_missing_path_exits_non_zero(tmp_path: Path, capsys):
    assert cli.main(["provenance", str(tmp_path / "nothing.zarr")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def _ingested(raw: Path, paths: list[str]) -> dict[str, str]:
    """The tokens a plan gives ``paths`` now, recorded as an ingest under them would."""
    toks = tokens(paths, str(raw))
    raw.mkdir(exist_ok=True)
    (raw / ".zattrs").write_text(json.dumps({"inputs": records(paths, toks)}))
    return toks


def test_the_fingerprint_sees_content_replaced_with_the_old_mtime(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the verified ctimes go to .snakemake/ here
    raw = tmp_path / "raw.zarr"
    f = tmp_path / "data.nc"
    f.write_bytes(b"a" * 100)
    store = tmp_path / "data.zarr"
    (store / "x").mkdir(parents=True)
    (store / "x" / "0").write_bytes(b"chunk")
    paths = [str(f), str(store)]
    before = _ingested(raw, paths)
    assert tokens(paths, str(raw)) == before  # stable after ingest recorded them
    st = f.stat()
    f.write_bytes(b"b" * 100)  # same size, then the old mtime put back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_mtime_ns == st.st_mtime_ns
    changed = tokens(paths, str(raw))
    assert changed[str(f)] != before[str(f)] and changed[str(store)] == before[str(store)]
    after = _ingested(raw, paths)  # ingest ran again under the new token
    assert after == changed and tokens(paths, str(raw)) == after
    f.chmod(0o600)  # metadata only: the content is read once, the token stays
    assert tokens(paths, str(raw)) == after
    assert json.loads((tmp_path / VERIFIED).read_text())[str(f)]
    (store / "x" / "0").write_bytes(b"other")  # a chunk rewritten: its mtime moved
    assert tokens(paths, str(raw))[str(store)] != after[str(store)]


def test_the_hour_of_day_climatology_keeps_the_diurnal_cycle_out():
    time = pd.date_range("2000-01-01", periods=4 * 366, freq="6h")
    hour = np.asarray(time.hour, dtype=float)
    x = xr.DataArray(
        (10 + 3 * np.cos(2 * np.pi * hour / 24))[:, None, None] * np.ones((1, 2, 3)),
        dims=("time", "variable", "lat"),
        coords={"time": time},
    )
    clim = climatology(x, "hour_dayofyear", 31, [0, 6, 12, 18])
    assert clim["period"].attrs == {"kind": "hour_dayofyear", "hours": [0, 6, 12, 18]}
    np.testing.assert_allclose(clim.values[:4, 0, 0], [13, 10, 7, 10], atol=1e-5)
    daily = climatology(x, "dayofyear", 31)
    np.testing.assert_allclose(daily.values[:, 0, 0], 10, atol=1e-5)  # the cycle averaged out


def test_a_constant_or_empty_training_period_is_found_from_the_raw_store(tmp_path: Path):
    from testdata import make_raw

    from hpcpipe.config import as_json
    from hpcpipe.ingest_checks import training_period_problems

    src = make_raw()
    src["t2m"][:200] = 280.0  # constant for the first 200 days
    src["z500"][:100] = np.nan  # no data for the first 100
    src.to_netcdf(tmp_path / "data.nc")
    params = {"variables": ["t2m", "z500"], "rename": {}, "select": {}, "group": None}
    raw = str(tmp_path / "raw.zarr")
    argv = ["ingest", "--params", as_json(params), "--input", str(tmp_path / "data.nc")]
    assert cli.main([*argv, "--output", raw, "--threads", "1"]) == 0
    stored = xr.open_zarr(raw)
    assert stored.attrs["params"] == as_json(params) and "steps_finite_t2m" in stored.coords

    def problems(train: list[str], p: dict = params) -> list[str]:
        return training_period_problems(raw, as_json(p), {"train": train}, ["t2m", "z500"])

    early = problems(["2000-01-01", "2000-03-31"])
    assert "variable 't2m' is constant over the training period" in early[0]
    assert "variable 'z500' is all NaN over the training period" in early[1]
    assert "preprocess.split.train 2000-01-01..2000-03-31" in early[0]
    assert problems(["2000-01-01", "2000-12-31"]) == []
    assert problems(["2000-01-01", "2000-03-31"], {**params, "select": {"x": 1}}) == []  # stale


def test_duplicate_yaml_keys_are_refused_but_merge_keys_are_not(tmp_path: Path):
    from hpcpipe.config_checks import DuplicateKeyError, load_yaml

    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &b\n  lr: 0.1\ntrain:\n  <<: *b\n  epochs: 2\n")
    assert load_yaml(merged)["train"] == {"lr": 0.1, "epochs": 2}
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 1\ntrain:\n  epochs: 2\n")
    with pytest.raises(DuplicateKeyError, match=r"twice.yaml, line 3: key 'train' is given twice"):
        load_yaml(twice)
