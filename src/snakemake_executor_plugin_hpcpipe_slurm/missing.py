"""The hpcpipe-slurm executor where the SLURM extra is not installed: it says how to get it.

It accepts the settings profiles/slurm sets, so that Snakemake reaches the executor, which
then stops with the install command instead of an "unrecognized arguments" error.
"""

from dataclasses import dataclass, field
from typing import Optional

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

INSTALL = (
    "the SLURM executor (hpcpipe-slurm) needs hpcpipe's SLURM extra: "
    "pip install -e '.[slurm]' in the hpcpipe checkout (it brings "
    "snakemake-executor-plugin-slurm)"
)


def _accepted() -> object:
    return field(default=None, metadata={"help": "needs hpcpipe[slurm]", "env_var": False})


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    # Optional[...]: Snakemake builds its command-line options from these annotations.
    status_command: Optional[str] = _accepted()  # noqa: UP045
    init_seconds_before_status_checks: Optional[int] = _accepted()  # noqa: UP045
    max_status_check_seconds: Optional[int] = _accepted()  # noqa: UP045
    status_attempts: Optional[int] = _accepted()  # noqa: UP045
    requeue: Optional[bool] = _accepted()  # noqa: UP045
    keep_successful_logs: Optional[bool] = _accepted()  # noqa: UP045
    array_jobs: Optional[str] = _accepted()  # noqa: UP045
    array_limit: Optional[int] = _accepted()  # noqa: UP045


class Executor(RemoteExecutor):
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise WorkflowError(INSTALL)

    def run_job(self, job: object) -> None:  # never reached: __init__ refuses
        raise WorkflowError(INSTALL)

    async def check_active_jobs(self, active_jobs: list):  # type: ignore[override]
        raise WorkflowError(INSTALL)
        yield  # an async generator, as the interface wants

    def cancel_jobs(self, active_jobs: list) -> None:
        raise WorkflowError(INSTALL)


common_settings = CommonSettings(
    non_local_exec=True, implies_no_shared_fs=False, job_deploy_sources=False
)
