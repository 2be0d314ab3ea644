"""The validation corpus against a finished pipeline run, and its figures in the test summary."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from validation.corpus import CONFIG_CASES, DATASET_CASES, Case
from validation.runner import WORKERS, Outcome, run_case, snapshot


@pytest.fixture(scope="module")
def baseline(pipeline_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the finished pipeline run (mtimes kept): the earlier results to protect."""
    wd = tmp_path_factory.mktemp("corpus") / "workdir"
    shutil.copytree(pipeline_run, wd, symlinks=True)
    return wd


@pytest.fixture(scope="module")
def corpus_run(
    baseline: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Outcome], dict]:
    """Every case through `snakemake` in the baseline; the baseline's snapshot from before."""
    before = snapshot(baseline)
    cases_dir = tmp_path_factory.mktemp("cases")

    def run(case: Case) -> Outcome:
        workdir = baseline
        if not case.before_jobs:
            # This one starts the ingest job, which replaces data/raw.zarr: a copy of its own.
            workdir = cases_dir / f"{case.id}-workdir"
            shutil.copytree(baseline, workdir, symlinks=True)
        return run_case(case, cases_dir / case.id, workdir)

    cases = CONFIG_CASES + DATASET_CASES
    with ThreadPoolExecutor(min(WORKERS, (os.cpu_count() or 1) + 1)) as pool:
        outcomes = {o.case.id: o for o in pool.map(run, cases)}
    return outcomes, before


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The corpus in figures: cases per kind and how many gave a named error."""
    named = "test_snakemake_stops_with_a_named_error"
    passed = {
        r.nodeid.split("[", 1)[1].rstrip("]")
        for r in terminalreporter.stats.get("passed", [])
        if named in r.nodeid and r.when == "call"
    }
    if not any(named in r.nodeid for v in terminalreporter.stats.values() for r in v
               if hasattr(r, "nodeid")):  # fmt: skip
        return
    lines = []
    for kind, cases in (("config", CONFIG_CASES), ("dataset", DATASET_CASES)):
        ok = sum(f"{kind}-{c.id}" in passed for c in cases)
        lines.append(f"{kind} cases: {len(cases)}, named error from snakemake: {ok}/{len(cases)}")
    terminalreporter.write_sep("-", "validation corpus")
    for line in lines:
        terminalreporter.write_line(line)
