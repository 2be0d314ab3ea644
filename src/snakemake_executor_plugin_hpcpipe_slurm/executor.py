"""The hpcpipe-slurm executor: snakemake-executor-plugin-slurm, tuned for short steps.

Everything (settings, submission) is the upstream plugin's, with its settings spelled
`--hpcpipe-slurm-...` instead of `--slurm-...`, and seven changes:

- `max-status-check-seconds` caps the wait between status checks. Upstream (2.8) waits 10 s
  longer after every round in which no job finished, up to 180 s, and no setting changes that:
  a job of a few seconds is seen finished only 12-20 s after it ended.
- The error of a failed group job (e.g. sbatch's "invalid partition") is printed; Snakemake 9
  shows only "Error in group ..." for groups and drops the executor's message.
- Inside the job, Snakemake runs the job's rules itself
  (its local executor), as cluster-generic job scripts do. Upstream starts one more Snakemake
  per rule under `srun -n1` (about 2.5 s each, and a group's rules one at a time). Rules that
  launch their own ranks (`mpi`) run the same either way: their shell calls srun.
  `upstream-job-steps` switches back to upstream's way.
- Retries only where a retry can help: a job that ran out of time or memory, lost its node
  or was preempted is resubmitted (with attempt-scaled resources); a job that failed with an
  error (exit status) or was cancelled by someone is not, since the retry would fail the same
  way or undo the cancellation.
- Job arrays (`array-jobs`: rule or group names, or `all`) also of group jobs, each task
  running its own command (arrays.py); upstream arrays only rules, and its tasks would all
  run the first task's command under this plugin's local executor. The sacct status query
  names tasks as squeue does (JobID, ``<array>_<task>``), so each task gets its own state.
- A retried group job runs only its members that have not finished: upstream reruns the whole
  group (`--force`), recomputing steps that completed before the job was killed. Finished
  members keep their outputs because the profile sets `keep-incomplete` (safe: every hpcpipe
  output is written atomically, so a killed step leaves nothing under its final name).
"""

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Optional

import snakemake_executor_plugin_slurm as _upstream
from snakemake_executor_plugin_slurm import Executor as SlurmExecutor
from snakemake_executor_plugin_slurm import ExecutorSettings as SlurmExecutorSettings
from snakemake_executor_plugin_slurm import common_settings  # noqa: F401  (the plugin API)

from snakemake_executor_plugin_hpcpipe_slurm import arrays

_upstream_sacct_query = _upstream.query_job_status_sacct


def _sacct_query_by_task_id(runid: str) -> str:
    """Upstream's sacct status query with JobID instead of JobIDRaw: JobID names an array
    task ``<array>_<task>``, as this plugin tracks it (and as squeue prints it); JobIDRaw is
    each task's own number, and upstream would then give every task the state of the one
    task whose number is the array's."""
    return _upstream_sacct_query(runid).replace("--format=JobIdRaw,State", "--format=JobID,State")


_upstream.query_job_status_sacct = _sacct_query_by_task_id


@dataclass
class ExecutorSettings(SlurmExecutorSettings):
    # Optional[...] and no `from __future__ import annotations`: Snakemake builds its
    # command-line options from these annotations at run time.
    max_status_check_seconds: Optional[int] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Longest wait between two job status checks (upstream grows it by 10 s "
            "per round without a finished job, up to 180 s). Unset: upstream's behaviour.",
            "env_var": False,
            "required": False,
        },
    )
    upstream_job_steps: bool = field(
        default=False,
        metadata={
            "help": "Run each rule of a job in one more Snakemake under `srun -n1`, as "
            "upstream does, instead of directly in the batch step (one Snakemake per job).",
            "env_var": False,
            "required": False,
        },
    )


class Executor(SlurmExecutor):
    def __post_init__(self, *args, **kwargs):
        super().__post_init__(*args, **kwargs)
        # Arrays are ours (arrays.py): of rules and of groups, each task running its own
        # command with the local executor. Upstream's (rules only, tasks through its
        # jobstep executor) would run every task as the first one under `--executor local`.
        self.hpcpipe_arrays, self.array_jobs = self.array_jobs, set()

    def run_jobs(self, jobs: list) -> None:
        batches, rest = arrays.batches(jobs, self.hpcpipe_arrays)
        # First, and also with no job left: upstream records here the event loop that
        # submissions (the arrays' too) report to from their threads.
        super().run_jobs(rest)
        for batch in batches:
            for job in batch:
                self.run_job_pre(job)
            self._job_submission_executor.submit(arrays.submit, self, batch, self.max_array_size)

    async def check_active_jobs(self, active_jobs: list) -> AsyncGenerator:
        async for job in super().check_active_jobs(active_jobs):
            yield job
        cap = self.workflow.executor_settings.max_status_check_seconds
        if cap and self.next_seconds_between_status_checks:
            self.next_seconds_between_status_checks = min(
                self.next_seconds_between_status_checks, cap
            )

    def additional_general_args(self) -> str:
        if self.workflow.executor_settings.upstream_job_steps:
            return super().additional_general_args()
        return "--executor local"

    def format_job_exec(self, job) -> str:
        command = super().format_job_exec(job)
        if job.is_group() and job.attempt > 1:
            # Without --force the job's Snakemake skips the members whose outputs exist.
            command = command.replace(" --force ", " ", 1)
        return command

    def report_job_error(self, job_info, msg=None, **kwargs):
        job = job_info.job
        status = _slurm_status(msg)
        attempts_left = job.restart_times > job.attempt - 1
        if status in NOT_WORTH_RETRYING and attempts_left:
            job.attempt = job.restart_times + 1  # Snakemake retries while attempts are left
            msg = f"{msg} Not retried: {NOT_WORTH_RETRYING[status]}."
        elif status in RETRIED_BECAUSE and attempts_left:
            msg = (
                f"{msg} Retried (attempt {job.attempt + 1} of {job.restart_times + 1}): "
                f"{RETRIED_BECAUSE[status]}."
            )
        if msg and job.is_group():
            self.logger.error(f"Group job {job.groupid} failed: {msg}")
        super().report_job_error(job_info, msg=msg, **kwargs)


# SLURM states after which a retry would only repeat the failure or undo a decision.
NOT_WORTH_RETRYING = {
    "FAILED": "the step exited with an error, which a retry would repeat (see its log)",
    "CANCELLED": "the job was cancelled (scancel); rerun Snakemake to resume",
}


# SLURM states that a retry can get past, and why (the rules scale resources by `attempt`).
RETRIED_BECAUSE = {
    "OUT_OF_MEMORY": "the job ran out of memory; the retry asks for mem_mb x attempt",
    "TIMEOUT": "the job ran out of time; the retry asks for runtime x attempt",
    "NODE_FAIL": "the job's node failed; SLURM places the retry on a node that is up",
    "PREEMPTED": "the job was preempted",
    "BOOT_FAIL": "the job's node did not boot",
}


def _slurm_status(msg: Optional[str]) -> Optional[str]:  # noqa: UP045
    """The SLURM state in upstream's failure message ("... SLURM status is: 'FAILED'")."""
    m = re.search(r"SLURM status is: '(\w+)'", msg or "")
    return m.group(1) if m else None
