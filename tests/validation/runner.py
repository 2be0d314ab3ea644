"""Running corpus cases through `snakemake`, and snapshots of what they must not change."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml
from validation.corpus import Case

# What a run may not change: the earlier results, their data and their logs.
GUARDED = ("data", "results", "logs")
# Each case is one Snakemake start (2-3 s, mostly imports): a few at once keep the corpus
# well under a minute on 2 cores. They fail while parsing, before Snakemake takes its lock,
# so they can share one working directory.
WORKERS = 3


@dataclass(frozen=True)
class Outcome:
    case: Case
    where: Path  # the case's directory: its files and overlay.yaml
    workdir: Path  # where snakemake ran
    returncode: int
    output: str  # stdout and stderr, as the user sees them

    @property
    def overlay(self) -> Path:
        return self.where / "overlay.yaml"


def snapshot(workdir: Path, tops: Iterable[str] = GUARDED) -> dict[str, tuple[int, int, str]]:
    """Size, mtime and SHA-256 of every file under ``tops``."""
    out = {}
    for top in tops:
        for p in sorted((workdir / top).rglob("*")):
            if p.is_file():
                st = p.stat()
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p.relative_to(workdir))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def write_overlay(case: Case, where: Path) -> Path:
    where.mkdir(parents=True)
    overlay = case.make(where)
    path = where / "overlay.yaml"
    path.write_text(overlay if isinstance(overlay, str) else yaml.safe_dump(overlay))
    return path


def run_case(case: Case, where: Path, workdir: Path, *args: str) -> Outcome:
    overlay = write_overlay(case, where)
    proc = subprocess.run(
        ["snakemake", *args, "--configfile", "config/config.yaml", str(overlay)],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return Outcome(case, where, workdir, proc.returncode, proc.stdout + proc.stderr)
