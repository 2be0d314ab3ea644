"""A sweep run locally: leaderboard and report page; adding, changing and removing points.

Starts from a copy of the session's pipeline run (its array-step outputs are reused, so
only the sweep's trainings run here) with one model and one epoch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from workdir import planned_jobs, snakemake

BASE = {"train": {"models": ["cnn"], "epochs": 1}}


def overlay(wd: Path, lrs: list[float]) -> list[str]:
    path = wd / f"sweep-{len(lrs)}-{lrs[-1]}.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sweep": {"parameters": {"train.lr": lrs}}}))
    return ["--configfile", "config/config.yaml", str(path)]


def test_a_sweep_reruns_only_new_or_changed_points(pipeline_run: Path, tmp_path: Path):
    wd = tmp_path / "wd"
    shutil.copytree(pipeline_run, wd, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    snakemake(wd, "-c2", *overlay(wd, [0.003, 0.01]), timeout=600)
    board = (wd / "results" / "leaderboard.csv").read_text().splitlines()
    assert len(board) == 3 and board[0].startswith("rank,run,model,seed,point,train.lr,val_loss")
    assert "Top 2 runs" in (wd / "results" / "sweep.rst").read_text()
    trained = sorted((wd / "results" / "models" / "cnn").glob("0-*/model.pt"))
    assert len(trained) == 2
    # a point added: only its run (and the summaries) are planned
    added = planned_jobs(wd, *overlay(wd, [0.003, 0.01, 0.03]))
    assert added["train"] == 1 and added["evaluate"] == 1, added
    # one value changed: that run only; the other point keeps its id and outputs
    changed = planned_jobs(wd, *overlay(wd, [0.003, 0.02]))
    assert changed["train"] == 1, changed
    # a point removed: nothing to train, and a real run deletes nothing
    removed = planned_jobs(wd, *overlay(wd, [0.003]))
    assert "train" not in removed, removed
    snakemake(wd, "-c2", *overlay(wd, [0.003]), timeout=600)
    assert all(p.exists() for p in trained)
