"""The layout's rules (docs/architecture.md) hold: scripts/check-layout finds nothing."""

from __future__ import annotations

import ast
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layout_rules_hold():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "check-layout")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "modules follow the layout rules" in proc.stdout


def test_layout_check_finds_a_breach():
    # The checker must be able to fail: a module naming a SLURM variable outside
    # runtime/environment.py, with a function over the limit, is reported twice.
    check = runpy.run_path(str(ROOT / "scripts" / "check-layout"))
    body = "\n".join(["    x = 1"] * 90)
    text = f'import os\n\n\ndef f():\n    os.environ["SLURM_PROCID"]\n{body}\n'
    bad = check["PACKAGE"] / "bad.py"  # a path inside the package, never written to disk
    tree = ast.parse(text)
    assert check["check_sizes"](bad, tree, len(text.splitlines()))
    assert check["check_launcher_variables"](bad, tree)
    chunky = ast.parse("def my_chunks(ds):\n    return {}\n")
    assert check["check_chunk_rules"](bad, chunky)
