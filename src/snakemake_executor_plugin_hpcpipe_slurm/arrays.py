"""Job arrays of hpcpipe-slurm: many ready jobs of one rule *or group*, one sbatch call.

Upstream (2.8) submits arrays of single rules only (a group job is never an array), and
runs each task through one more Snakemake of its jobstep executor, which hpcpipe-slurm
replaces by Snakemake's local executor inside the job. Here every task runs its own job's
command, read from a file of one command per line next to the SLURM logs (a shared
filesystem, as Snakemake on SLURM assumes anyway), so a sweep's train-and-evaluate group
runs as one array per stage: one job per run, evaluation on the GPU that trained it.

Tasks are reported as ``<array id>_<task>``, as upstream does, so its status checks,
cancellation and retries work unchanged: a failed task is retried as a job of its own.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo

MIN_TASKS = 2  # a single ready job is submitted as a plain job


def selected(job: Any, names: set[str]) -> bool:
    """Is ``job`` (a rule's job, or a group job by its group's name) to go into an array?"""
    return "all" in names or (job.groupid if job.is_group() else job.name) in names


def batches(jobs: Iterable[Any], names: set[str]) -> tuple[list[list[Any]], list[Any]]:
    """The jobs that go into arrays, as batches of one name and identical resources (one
    sbatch's options serve every task), and the others."""
    by_key: dict[tuple, list[Any]] = {}
    rest = []
    for job in jobs:
        if selected(job, names) and "mpi" not in job.resources:  # mpi: its own srun
            key = (job.name, tuple(sorted((k, str(v)) for k, v in job.resources.items())))
            by_key.setdefault(key, []).append(job)
        else:
            rest.append(job)
    arrays = []
    for group in by_key.values():
        if len(group) >= MIN_TASKS:
            arrays.append(group)
        else:
            rest += group
    return arrays, rest


def task_script(commands_file: Path) -> str:
    """The batch script: task i runs line i of the commands file."""
    f = shlex.quote(str(commands_file))
    return f'#!/bin/sh\nexec sh -c "$(sed -n "${{SLURM_ARRAY_TASK_ID}}p" {f})"\n'


def submit(executor: Any, jobs: list[Any], chunk: int) -> None:
    """Submit ``jobs`` as arrays of at most ``chunk`` tasks (run in the submission thread)."""
    for start in range(0, len(jobs), chunk):
        part = jobs[start : start + chunk]
        try:
            _submit_one(executor, part)
        except Exception as exc:  # every task must hear of the failure
            for job in part:
                executor._report_job_error_threadsafe(
                    SubmittedJobInfo(job), f"array submission failed: {exc}"
                )


def _submit_one(executor: Any, jobs: list[Any]) -> None:
    first = jobs[0]
    kind = f"group_{first.name}" if first.is_group() else f"rule_{first.name}"
    logdir = executor.slurm_logdir / kind
    logdir.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        validate_slurm_extra(job)
    commands = [executor.format_job_exec(job) for job in jobs]
    if any("\n" in c for c in commands):
        raise ValueError("a job command spans lines; it cannot be an array task")
    # The attempt too: a retried batch must not overwrite the file that tasks of the
    # earlier array, still pending, read their commands from.
    name = f"array-{executor.run_uuid}-{first.jobid}-{first.attempt}"
    commands_file = logdir / f"{name}.commands"
    commands_file.write_text("\n".join(commands) + "\n")
    script = logdir / f"{name}.sh"
    script.write_text(task_script(commands_file.resolve()))
    params = {
        "run_uuid": executor.run_uuid,
        "slurm_logfile": logdir / "%A_%a.log",
        "comment_str": f"{kind}_array_{len(jobs)}",
        "account": next(executor.get_account_arg(first)),
        "partition": executor.get_partition_arg(first),
        "workdir": executor.workflow.workdir_init,
    }
    call = get_submit_command(
        first, params, settings=executor.workflow.executor_settings,
        failed_nodes=executor._failed_nodes,
    )  # fmt: skip
    call += set_gres_string(first) + f" --array=1-{len(jobs)} {shlex.quote(str(script))}"
    proc = subprocess.run(call, shell=True, text=True, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed: {proc.stderr.strip()} (call: {call})")
    array_id = proc.stdout.strip().split(";")[0]
    for i, job in enumerate(jobs, start=1):
        info = SubmittedJobInfo(
            job,
            external_jobid=f"{array_id}_{i}",
            aux={"slurm_logfile": logdir / f"{array_id}_{i}.log"},
        )
        executor._report_job_submission_threadsafe(info)
    executor.logger.info(
        f"Submitted {kind} as SLURM job array {array_id} of {len(jobs)} tasks "
        f"(Snakemake jobs {', '.join(str(j.jobid) for j in jobs)})."
    )
