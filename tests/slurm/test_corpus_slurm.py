"""Broken configs and datasets stop before Snakemake submits anything to SLURM.

A representative part of the validation corpus (tests/validation/corpus.py) through
`snakemake --profile profiles/slurm`: each case must fail with its named error while no job
reaches the queue and the executor writes no SLURM logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from validation.corpus import CONFIG_CASES, DATASET_CASES, Case
from validation.runner import run_case
from workdir import make_workdir

pytestmark = pytest.mark.slurm

# One of each kind of problem: a wrong type, a misspelled key, an impossible split, a shell
# character in a name, a variable the file lacks, yearly files in different calendars.
SUBSET = (
    "batch_size_is_a_string",
    "unknown_top_level_key",
    "splits_overlap",
    "variable_with_command_substitution",
    "missing_variable",
    "mixed_calendars",
)
CASES = [c for c in CONFIG_CASES + DATASET_CASES if c.id in SUBSET]


def jobs_under(cluster, root: Path) -> list[str]:
    """Ids of queued, running or recently finished jobs whose working directory is in root."""
    proc = cluster.run(["squeue", "--noheader", "--states=all", "--format=%i %Z"])
    assert proc.returncode == 0, proc.stderr
    return [
        line.split()[0]
        for line in proc.stdout.splitlines()
        if len(line.split()) == 2 and line.split()[1].startswith(str(root))
    ]


def test_the_subset_covers_every_name():
    assert len(CASES) == len(SUBSET)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_no_slurm_job_starts_for_a_broken_config(slurm_cluster, tmp_path: Path, case: Case):
    wd = make_workdir(tmp_path / "wd")
    out = run_case(case, tmp_path / case.id, wd, "--profile", "profiles/slurm")
    submitted = jobs_under(slurm_cluster, tmp_path)
    if submitted:  # a failure of this test: leave nothing running on the shared cluster
        slurm_cluster.run(["scancel", *submitted])
    assert out.returncode != 0
    for words in case.expected(out.where):
        assert words in out.output, out.output[-3000:]
    assert "Traceback" not in out.output
    assert not submitted, f"jobs were submitted: {submitted}"
    assert not (wd / ".snakemake" / "slurm_logs").exists()
