"""`hpcpipe launch -n N CMD...`: start N ranks of CMD, the same way on a laptop and in SLURM.

- Inside a SLURM job's batch script: `srun -n N CMD`, also for N=1, so that the ranks run in
  a job step: SLURM's `--signal` (the warning before the time limit) reaches only job steps,
  never the batch script's processes. The profile sets `mpi: srun` for N>1 so that the plugin
  does not wrap the step itself (plugin 2.8 allows `mpi` only with tasks >= 2, which is why
  the rule does not spell `{resources.mpi}` itself).
- Already inside a job step (the plugin's own `srun -n1`) with N=1: the command replaces this
  process.
- Outside SLURM: N=1 replaces this process; N>1 starts N local processes with the torchrun
  variables (:func:`hpcpipe.runtime.environment.torchrun_environ`), which training reads
  back. If one rank fails, the others are stopped and its exit status is returned; SIGTERM,
  SIGINT and SIGUSR1 are passed on to every rank.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from hpcpipe.runtime.allocation import visible_gpus
from hpcpipe.runtime.environment import (
    in_job_step,
    slurm_job,
    torchrun_environ,
    visible_devices,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(n: int, command: list[str]) -> int:
    if not command:
        raise SystemExit("hpcpipe launch: no command given")
    job = slurm_job()
    if job is not None and not in_job_step():
        srun = ["srun", "--ntasks", str(n), "--kill-on-bad-exit=1", "--export=ALL"]
        os.execvp(srun[0], srun + command)
    if n == 1:
        os.execvp(command[0], command)
    gpus = visible_gpus()
    if 0 < gpus < n:
        # Two ranks on one GPU run out of its memory or fail in NCCL: say so before starting.
        raise SystemExit(
            f"hpcpipe launch: {n} ranks but only {gpus} GPU(s) visible "
            f"(visible: {','.join(visible_devices() or []) or 'unset'}); "
            f"start at most {gpus} ranks, one per GPU"
        )
    port = free_port()
    procs = []
    for rank in range(n):
        env = {**os.environ, **torchrun_environ(rank, n, port)}
        procs.append(subprocess.Popen(command, env=env))

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, forward)
    status = 0
    while procs:
        for p in list(procs):
            rc = p.poll()
            if rc is None:
                continue
            procs.remove(p)
            if rc != 0 and status == 0:
                status = rc
                forward(signal.SIGTERM, None)  # one rank failed: do not leave the others hanging
        time.sleep(0.05)
    return status


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="hpcpipe launch", description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--ntasks", type=int, default=1)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    return launch(args.ntasks, args.command)


if __name__ == "__main__":
    sys.exit(main())
