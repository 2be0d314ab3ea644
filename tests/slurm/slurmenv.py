"""Where the local cluster's script is, and whether this is CI: for conftest.py and the tests.

A module of its own because test modules cannot import ``conftest`` reliably: every test
directory has one, and whichever was imported first owns the name.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "scripts" / "local-slurm"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def sacct_megabytes(text: str) -> float:
    """A sacct memory field ("3176K", "310.5M", "1.2G") in MB."""
    units = {"K": 2**-10, "M": 1.0, "G": 2**10}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text) / 2**20


def sacct_seconds(text: str) -> float:
    """A sacct time field ([DD-[HH:]]MM:SS[.mmm]) in seconds."""
    days, _, rest = text.rpartition("-")
    parts = [float(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    return int(days or 0) * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]


def sacct_step(cluster: Any, step: str, fields: tuple[str, ...], timeout: float = 30) -> dict:
    """``fields`` of a job step ("<id>.batch") from sacct, once its MaxRSS is stored
    (slurmctld sends the record to slurmdbd at its own pace)."""
    want = ("MaxRSS", *(f for f in fields if f != "MaxRSS"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = cluster.run(["sacct", "-n", "-P", "-j", step, "-o", ",".join(want)]).stdout.split()
        got = dict(zip(want, out[0].split("|"), strict=False)) if out else {}
        if got.get("MaxRSS", "")[-1:] in ("K", "M", "G") and all(got.get(f) for f in want):
            return got
        time.sleep(1)
    raise AssertionError(f"sacct has no {', '.join(want)} for {step}")


def submitted_job_ids(out: str) -> list[str]:
    """The job ids of the sbatch calls that Snakemake's SLURM plugin reported in ``out``."""
    return re.findall(r"has been submitted with SLURM jobid (\d+)", out)
