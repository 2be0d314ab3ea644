"""Where the local cluster's script is, and whether this is CI: for conftest.py and the tests.

A module of its own because test modules cannot import ``conftest`` reliably: every test
directory has one, and whichever was imported first owns the name.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOCAL_SLURM = REPO / "scripts" / "local-slurm"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def sacct_megabytes(text: str) -> float:
    """A sacct memory field ("3176K", "310.5M", "1.2G") in MB."""
    units = {"K": 2**-10, "M": 1.0, "G": 2**10}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text) / 2**20
