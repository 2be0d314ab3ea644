"""Training in bounded memory: a job given --mem trains on features four times that size.

The features are streamed from the store chunk by chunk (hpcpipe.train.data) because they do
not fit the job's budget, and the cgroup that enforces --mem does not kill the job. Synthetic
features of the features step's layout (docs/data-contracts.md), written chunk by chunk with
Dask; one short epoch of a one-layer CNN. About 60 s.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from slurmenv import sacct_megabytes, sacct_step

from hpcpipe.chunking import feature_chunks
from hpcpipe.store import write_store

pytestmark = pytest.mark.slurm

# A training process holds about 0.4 GB of its own (torch) and, streaming, a few feature chunks
# and batches in flight (about 0.7 GB here, whatever the data size): --mem=1500 is enough for
# any size of features, and 4x that is 6 GB of features.
JOB_MB = 1500
GRID = (64, 128)
# Many channels per sample: 2.3 MB samples make few training steps per GB (a short epoch).
CHANNELS, LEADS, VARIABLES = 64, [1, 2, 3], ["t2m", "z500"]


def _block(block: np.ndarray, block_info=None) -> np.ndarray:
    # A small random pattern repeated, shifted per chunk: quick to make, compress, write and
    # read (6 GB decoded), and not constant (the model has something to fit).
    start = block_info[None]["array-location"][0][0]
    pattern = np.random.default_rng(start).integers(0, 4, block.shape[-1]).astype(np.float32)
    return np.broadcast_to(pattern / 4, block.shape).copy()


def write_features(path: Path, n: int) -> int:
    """A feature store of n samples on GRID; returns its decoded bytes (inputs + targets)."""
    per = max(1, (64 << 20) // (4 * (CHANNELS + len(LEADS) * len(VARIABLES)) * GRID[0] * GRID[1]))
    x = da.zeros((n, CHANNELS, *GRID), np.float32, chunks=(per, -1, -1, -1)).map_blocks(
        _block, dtype=np.float32
    )
    y = da.zeros((n, len(LEADS), len(VARIABLES), *GRID), np.float32,
                 chunks=(per, -1, -1, -1, -1)).map_blocks(_block, dtype=np.float32)  # fmt: skip
    ds = xr.Dataset(
        {
            "inputs": (("sample", "channel", "lat", "lon"), x),
            "targets": (("sample", "lead", "variable", "lat", "lon"), y),
            "mask": (("variable", "lat", "lon"), np.ones((len(VARIABLES), *GRID), bool)),
        },
        coords={
            "sample": np.arange(n),
            "channel": [f"c{i}" for i in range(CHANNELS)],
            "lead": LEADS,
            "variable": VARIABLES,
            "lat": np.linspace(-88.0, 88.0, GRID[0]),
            "lon": np.arange(GRID[1]) * 360.0 / GRID[1],
        },
        attrs={"grid": "global"},
    )
    write_store(ds, path, feature_chunks(ds))
    return int(x.nbytes + y.nbytes)


def test_training_streams_features_four_times_its_memory(slurm_cluster, tmp_path: Path):
    per_sample = 4 * (CHANNELS + len(LEADS) * len(VARIABLES)) * GRID[0] * GRID[1]
    need = write_features(tmp_path / "train.zarr", 4 * JOB_MB * 2**20 // per_sample + 1)
    write_features(tmp_path / "val.zarr", 128)
    assert need > 4 * JOB_MB * 2**20
    params = {
        "train": {"epochs": 1, "batch_size": 16, "lr": 1e-3, "weight_decay": 0.0,
                  "lr_schedule": "constant", "patience": 1, "deterministic": False,
                  "precision": "fp32", "compile": False, "checkpoint_every": 0},
        "model": {"channels": 4, "layers": 1, "kernel_size": 1},
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "hpcpipe.cli", "train", "--params", json.dumps(params),
        "--train", str(tmp_path / "train.zarr"), "--val", str(tmp_path / "val.zarr"),
        "--model", "cnn", "--seed", "0", "--threads", "2",
        "--output", str(tmp_path / "model.pt"), "--history", str(tmp_path / "history.csv"),
        "--log", str(tmp_path / "train.log"),
    ]  # fmt: skip
    result = slurm_cluster.sbatch(
        f"--mem={JOB_MB}", "--cpus-per-task=2", "--time=3", script=shlex.join(cmd),
        workdir=tmp_path, wait=True, timeout=240,
    )  # fmt: skip
    job_id = result.stdout.strip().split(";")[0]
    log = (tmp_path / "train.log").read_text() if (tmp_path / "train.log").exists() else ""
    out = (tmp_path / f"slurm-{job_id}.out").read_text()
    assert result.returncode == 0, (slurm_cluster.state(job_id), out[-2000:], log[-2000:])
    assert "streamed from the store" in log, log
    assert (tmp_path / "model.pt").exists()
    fields = sacct_step(slurm_cluster, f"{job_id}.batch", ("State", "MaxRSS"))
    assert fields.get("State") == "COMPLETED", fields
    assert sacct_megabytes(fields["MaxRSS"]) < JOB_MB, fields
