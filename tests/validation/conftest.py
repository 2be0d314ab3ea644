"""The validation corpus against a finished pipeline run, and its figures in the test summary."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from validation.corpus import CONFIG_CASES, DATASET_CASES, SNAKEMAKE_CASES, Case
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

    cases = SNAKEMAKE_CASES
    with ThreadPoolExecutor(min(WORKERS, (os.cpu_count() or 1) + 1)) as pool:
        outcomes = {o.case.id: o for o in pool.map(run, cases)}
    return outcomes, before


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The corpus in figures: cases per kind and how many gave a named error, and where."""

    def passed(test: str) -> set[str]:
        return {
            r.nodeid.split("[", 1)[1].rstrip("]")
            for r in terminalreporter.stats.get("passed", [])
            if f"::{test}[" in r.nodeid and r.when == "call"
        }

    by_check_config = passed("test_check_config_names_the_problem")
    by_snakemake = passed("test_snakemake_stops_with_a_named_error")
    if not by_check_config and not by_snakemake:
        return
    terminalreporter.write_sep("-", "validation corpus")
    for kind, cases in (("config", CONFIG_CASES), ("dataset", DATASET_CASES)):
        checked = [c for c in cases if c.before_jobs]
        ok = sum(c.id in by_check_config for c in checked)
        run = [c for c in cases if c in SNAKEMAKE_CASES]
        ok_run = sum(f"{kind}-{c.id}" in by_snakemake for c in run)
        terminalreporter.write_line(
            f"{kind} cases: {len(cases)}; named error before any job: {ok}/{len(checked)} "
            f"(check-config); through snakemake: {ok_run}/{len(run)}"
        )
