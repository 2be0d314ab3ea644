"""What the fault tests share: counts for the session summary, the checks that no partial output
is taken for a finished one, and Snakemake runs in the background with pause points.

The counts (:data:`COUNTS`) are printed at the end of the test session (``pytest_terminal_summary``
in conftest.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pausepoints

from hpcpipe.atomic import TMP_MARK, stale_temporaries
from hpcpipe.provenance import SUFFIX, checksum

# Enough training to be interrupted mid-way (about 5 s per model here), checkpoints often.
FAULT_CFG = {"train": {"epochs": 80, "patience": 80, "checkpoint_every": 20}}
METRICS = ("results/eval/cnn/0/metrics.json", "results/eval/unet/0/metrics.json")
COUNTS: dict[str, int] = {}  # what the session summary reports


def count(key: str, n: int = 1) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + n


def finished_outputs(wd: Path) -> dict[str, str]:
    """Every output of a finished step (it has a manifest), with its checksum now.

    Fails if an output under its final name does not match the checksum its step recorded:
    that would be a partial output taken for a finished one.
    """
    found = {}
    for manifest in sorted([*wd.glob("data/**/*" + SUFFIX), *wd.glob("results/**/*" + SUFFIX)]):
        out = manifest.with_name(manifest.name.removesuffix(SUFFIX))
        record = json.loads(manifest.read_text())
        recorded = next(v for k, v in record["outputs"].items() if Path(k).name == out.name)
        assert out.exists(), f"{manifest} describes {out}, which is missing"
        now = checksum(out)
        assert now == recorded, f"{out} differs from what its step wrote: a partial output"
        found[str(out.relative_to(wd))] = now
    return found


def outputs_under_final_names(wd: Path) -> list[Path]:
    """Every output under data/ and results/ (files and Zarr stores; no manifests and no
    temporaries)."""
    found, todo = [], [wd / "data", wd / "results"]
    while todo:
        folder = todo.pop()
        for p in sorted(folder.iterdir()) if folder.is_dir() else []:
            if p.name.endswith(SUFFIX) or TMP_MARK in p.name:
                continue
            if p.is_dir() and p.suffix != ".zarr":
                todo.append(p)
            else:
                found.append(p)
    return found


def taken_for_finished(wd: Path) -> list[str]:
    """Outputs under a final name that are not what a finished step wrote: no manifest (a
    temporary promoted, or a write that was not atomic), or a checksum that no longer matches
    the manifest's (overwritten after the step finished)."""
    bad = []
    for out in outputs_under_final_names(wd):
        rel, manifest = out.relative_to(wd), out.with_name(out.name + SUFFIX)
        if not manifest.exists():
            bad.append(f"{rel}: under its final name without a manifest")
            continue
        outputs = json.loads(manifest.read_text())["outputs"]
        recorded = next((v for k, v in outputs.items() if Path(k).name == out.name), None)
        if recorded != checksum(out):
            bad.append(f"{rel}: differs from the checksum its step recorded")
    return bad


def partial_outputs(wd: Path) -> list[Path]:
    """Temporaries of killed writers (partial outputs, never under a final name); fails if a
    partial output sits under a final name."""
    found = stale_temporaries(wd / "data") + stale_temporaries(wd / "results")
    bad = taken_for_finished(wd)
    count("partial outputs found", len(found))
    count("partial outputs taken for finished", len(bad))
    assert not bad, f"partial outputs taken for finished: {bad}"
    return found


STARTED: list[subprocess.Popen] = []  # killed after each test (kill_leftover_runs)


def run_in_background(
    wd: Path, profile: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    proc = subprocess.Popen(
        ["snakemake", "--profile", str(profile)],
        cwd=wd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    STARTED.append(proc)
    return proc


def paused_env(bin_dir: Path, pause: Path, **point: object) -> dict[str, str]:
    """The environment for a Snakemake run whose steps (SLURM jobs too: sbatch --export=ALL)
    run ``hpcpipe`` through the pause-point wrapper, paused at ``point``."""
    pausepoints.wrapper(bin_dir)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, **pausepoints.pause_env(pause, **point)}


def wait_for(what: str, condition, proc: subprocess.Popen, timeout: float = 300, poll: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"snakemake ended before {what}:\n{out[-4000:]}")
        time.sleep(poll)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise
    return proc.returncode, out


def log_text(wd: Path, name: str) -> str:
    path = wd / "logs" / f"{name}.log"
    return path.read_text() if path.exists() else ""


def assert_untouched(before: dict[str, str], wd: Path) -> None:
    """Finished steps were not recomputed: their outputs are the very same files."""
    after = finished_outputs(wd)
    recomputed = [k for k, v in before.items() if after.get(k) != v]
    count("finished outputs checked", len(before))
    count("finished outputs recomputed", len(recomputed))
    assert not recomputed, f"finished outputs were recomputed: {recomputed}"
