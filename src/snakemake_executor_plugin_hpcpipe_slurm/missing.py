"""The hpcpipe-slurm executor where the SLURM extra is not installed: it says how to get it."""

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.settings import CommonSettings, ExecutorSettingsBase

INSTALL = (
    "the SLURM executor (hpcpipe-slurm) needs hpcpipe's SLURM extra: "
    "pip install -e '.[slurm]' in the hpcpipe checkout (it brings "
    "snakemake-executor-plugin-slurm)"
)


class ExecutorSettings(ExecutorSettingsBase):
    pass


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
