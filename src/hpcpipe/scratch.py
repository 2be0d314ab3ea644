"""A scratch copy of the workflow: where the tests and the benchmarks run the real thing.

The workflow is the Snakefile and what it reads (config, rules, profiles, environments) in
the source tree this package is installed from (``pip install -e .``, as the README does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW_FILES = ("Snakefile", "config", "workflow", "profiles", "envs")


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow's files into ``dest`` (created if needed); returns ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if not src.exists():
            raise FileNotFoundError(f"{src}: not a source checkout (install with pip -e)")
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest / name)
    return dest
