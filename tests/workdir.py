"""Run the real workflow in a scratch directory with a tiny config (workflow and SLURM tests)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from hpcpipe.scratch import copy_workflow

TINY = {
    "dataset": {"builtin": {"n_days": 500, "n_lat": 16, "n_lon": 32}},
    "preprocess": {
        "split": {
            "train": ["2000-01-01", "2000-12-31"],
            "val": ["2001-01-01", "2001-02-28"],
            "test": ["2001-03-01", "2001-05-14"],
        }
    },
    "train": {"epochs": 3, "patience": 2},
    "models": {"cnn": {"channels": 8, "layers": 2}, "unet": {"channels": 8, "depth": 2}},
}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def make_workdir(dest: Path, overrides: dict | None = None) -> Path:
    copy_workflow(dest)
    cfg = yaml.safe_load((dest / "config" / "config.yaml").read_text())
    deep_update(cfg, TINY)
    deep_update(cfg, overrides or {})
    (dest / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest


def snakemake(
    workdir: Path, *args: str, timeout: int = 600, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["snakemake", *args], cwd=workdir, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> job count that a dry run plans (Snakemake's job stats table)."""
    out = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts
