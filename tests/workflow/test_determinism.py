"""Two runs of the pipeline from scratch give identical data, weights and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from workdir import make_workdir, snakemake

pytestmark = pytest.mark.workflow


def zarr_files(root: Path) -> dict[str, bytes]:
    """Every file inside every Zarr store (chunks and metadata) under ``root``."""
    out = {}
    for store in sorted(root.rglob("*.zarr")):
        for f in sorted(store.rglob("*")):
            if f.is_file():
                out[str(f.relative_to(root))] = f.read_bytes()
    return out


def test_two_runs_from_scratch_are_identical(pipeline_run: Path, tmp_path: Path):
    again = make_workdir(tmp_path / "again")
    snakemake(again)
    a, b = zarr_files(pipeline_run), zarr_files(again)
    assert a.keys() == b.keys() and len(a) > 20
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, f"Zarr files differ between runs: {differ[:5]}"
    for model in ("cnn", "unet"):
        sa = torch.load(pipeline_run / "results/models" / model / "0/model.pt", weights_only=False)
        sb = torch.load(again / "results/models" / model / "0/model.pt", weights_only=False)
        assert sa["state_dict"].keys() == sb["state_dict"].keys()
        for k in sa["state_dict"]:
            assert torch.equal(sa["state_dict"][k], sb["state_dict"][k]), f"{model}: {k}"
        ma = json.loads((pipeline_run / "results/eval" / model / "0/metrics.json").read_text())
        mb = json.loads((again / "results/eval" / model / "0/metrics.json").read_text())
        assert ma == mb
