"""Every broken config and dataset of the corpus stops with an error that names its cause.

For each case: `snakemake` (where the user meets the error) exits non-zero, prints the key,
file or variable at fault in plain words and no traceback, starts no job when the problem can
be known beforehand, runs nothing a shell character in a value asks for, and leaves the
earlier results as they were. `hpcpipe check-config` gives the same message.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from validation.corpus import (
    ACCEPTED_CASES,
    ALL_CASES,
    CONFIG_CASES,
    DATASET_CASES,
    SNAKEMAKE_CASES,
    Case,
)
from validation.runner import GUARDED, Outcome, snapshot, write_overlay

from hpcpipe import cli

pytestmark = pytest.mark.workflow

CASES = [
    pytest.param(c, id=f"{'config' if c in CONFIG_CASES else 'dataset'}-{c.id}")
    for c in SNAKEMAKE_CASES
]
# Snakemake announces every job it starts with a line "rule <name>:" or "localrule <name>:".
JOB_STARTED = re.compile(r"^(local)?rule \w+:", re.MULTILINE)


def test_the_corpus_has_enough_cases():
    assert len(CONFIG_CASES) >= 20 and len(DATASET_CASES) >= 10
    ids = [c.id for c in CONFIG_CASES + DATASET_CASES + ACCEPTED_CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", CASES)
def test_snakemake_stops_with_a_named_error(case: Case, corpus_run: tuple[dict, dict]):
    out: Outcome = corpus_run[0][case.id]
    text = out.output
    assert out.returncode != 0, text[-3000:]
    for words in case.expected(out.where):
        assert words in text, f"{words!r} not in the message:\n{text[-3000:]}"
    assert "Traceback" not in text, text[-3000:]
    assert not (out.where / "pwned").exists()  # no value reached a shell unquoted
    if case.before_jobs:
        assert not JOB_STARTED.search(text), f"a job started:\n{text[-3000:]}"


def test_earlier_results_are_untouched(baseline: Path, corpus_run: tuple[dict, dict]):
    before = corpus_run[1]
    after = snapshot(baseline)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"changed by a failed run: {changed[:20]}"
    assert before  # the baseline does hold results


@pytest.mark.parametrize(
    "case", [c for c in DATASET_CASES if not c.before_jobs], ids=lambda c: c.id
)
def test_a_failing_ingest_job_leaves_the_results_alone(
    case: Case, baseline: Path, corpus_run: tuple[dict, dict]
):
    """A problem found only while reading all data fails the ingest job; Snakemake removes
    that job's own output (data/raw.zarr, about to be replaced) but nothing downstream."""
    out: Outcome = corpus_run[0][case.id]
    results = [t for t in GUARDED if t != "data"]
    after = snapshot(out.workdir, results)
    assert after.pop("logs/ingest.log")  # the failed job's own log, naming the file
    assert after == snapshot(baseline, results)
    assert JOB_STARTED.search(out.output) and "rule ingest:" in out.output


@pytest.mark.parametrize("case", [c for c in ALL_CASES if c.before_jobs], ids=lambda c: c.id)
def test_check_config_names_the_problem(
    case: Case, baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    """Every case, through the checks the Snakefile runs before any job (in-process)."""
    where = tmp_path / case.id
    overlay = write_overlay(case, where)
    code = cli.main(["check-config", str(baseline / "config" / "config.yaml"), str(overlay)])
    err = capsys.readouterr().err
    assert code == 1
    for words in case.expected(where):
        assert words in err, f"{words!r} not in the message:\n{err}"
    assert "Traceback" not in err
    assert not (where / "pwned").exists()


@pytest.mark.parametrize("case", ACCEPTED_CASES, ids=lambda c: c.id)
def test_accepted_cases_are_repaired_with_a_warning(
    case: Case, baseline: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    overlay = write_overlay(case, tmp_path / case.id)
    code = cli.main(["check-config", str(baseline / "config" / "config.yaml"), str(overlay)])
    err = capsys.readouterr().err
    assert code == 0, err
    for words in case.expected(tmp_path / case.id):
        assert words in err
