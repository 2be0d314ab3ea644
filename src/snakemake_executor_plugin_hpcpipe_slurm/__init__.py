"""`executor: hpcpipe-slurm`: the upstream SLURM plugin tuned for short steps (executor.py).

SLURM support is the extra `hpcpipe[slurm]`, which brings the upstream plugin. Snakemake
imports every installed executor plugin when it starts, and the upstream one runs `sacct`,
`squeue` and `scontrol show config` at import time (up to 10 s each where SLURM's commands
exist but no controller answers), so a laptop install must not carry it. Without it this
plugin still registers, as a stub that says how to install it when a profile selects it.
"""

try:
    from snakemake_executor_plugin_hpcpipe_slurm.executor import (
        Executor,
        ExecutorSettings,
        common_settings,
    )
except ModuleNotFoundError as exc:
    if exc.name != "snakemake_executor_plugin_slurm":
        raise
    from snakemake_executor_plugin_hpcpipe_slurm.missing import (
        Executor,
        ExecutorSettings,
        common_settings,
    )

__all__ = ["Executor", "ExecutorSettings", "common_settings"]
