"""Lint is part of the test suite, so CI and the README's test command enforce it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "cmd",
    [
        ("ruff", "check", "."),
        ("ruff", "format", "--check", "."),
        ("snakefmt", "--check", "Snakefile", "workflow"),
    ],
    ids=["ruff-check", "ruff-format", "snakefmt"],
)
def test_linters_are_clean(cmd: tuple[str, ...]):
    proc = run(*cmd)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_snakemake_lint_reports_nothing():
    proc = run("snakemake", "--lint", "text")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out
