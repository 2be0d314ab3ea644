"""Pause points for the fault tests: a step stops at a chosen point until the test releases it.

A test that kills or signals a step "while it writes its store" or "mid-training" must not
depend on how fast the machine is. Instead of polling for a short window, it runs the step
through :func:`wrapper` (an ``hpcpipe`` executable: put its directory first on PATH, or call
it instead of ``python -m hpcpipe.cli``) with the variable from :func:`pause_env` set, and the
step stops at the point and waits there:

- ``step="preprocess", output="preprocessed.zarr"``: just before the store, complete under its
  temporary name, is renamed to its final name (hpcpipe.atomic);
- ``step="train", after_step=N``: right after global step N's ``on_step`` (so a periodic
  checkpoint due at step N is on disk); optional ``model`` (the ``--model``) and ``rank``
  (default 0) pick the process that pauses.

At the point the process writes ``<dir>/paused`` (JSON: its pid, its SLURM job id, where it
is) and waits until ``<dir>/go`` exists. In training, a stop signal received during the pause
first writes ``<dir>/signalled`` (JSON: the signal's name), so a test can wait for SLURM's
signal as an event. A pause never released ends the process with an error after ``timeout``
seconds (default 600), so a broken test cannot leave a job hanging. Nothing in src/ knows about
this: the wrapper patches the running process only.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

ENV = "HPCPIPE_TEST_PAUSE"
TIMEOUT = 600.0


def wrapper(directory: Path) -> Path:
    """An ``hpcpipe`` executable in ``directory`` that honours the pause variable."""
    directory.mkdir(parents=True, exist_ok=True)
    exe = directory / "hpcpipe"
    exe.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{Path(__file__).resolve()}' \"$@\"\n")
    exe.chmod(0o755)
    return exe


def pause_env(directory: Path, **point: Any) -> dict[str, str]:
    """The environment variable that makes the wrapped step pause at ``point``."""
    return {ENV: json.dumps({"dir": str(directory), **point})}


def release(directory: Path) -> None:
    (directory / "go").touch()


def marker(directory: Path, name: str) -> dict[str, Any] | None:
    """The content of ``<directory>/<name>`` once it exists (written atomically), else None."""
    path = directory / name
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(json.dumps(content))
    tmp.replace(path)


def _pause(point: dict[str, Any], where: dict[str, Any], stop: Any = None) -> None:
    from hpcpipe.runtime.environment import slurm_job_id

    d = Path(point["dir"])
    d.mkdir(parents=True, exist_ok=True)
    _write(d / "paused", {"pid": os.getpid(), "job": slurm_job_id(), **where})
    deadline = time.monotonic() + float(point.get("timeout", TIMEOUT))
    while not (d / "go").exists():
        if stop is not None and stop.signum is not None and not (d / "signalled").exists():
            _write(d / "signalled", {"signal": signal.Signals(stop.signum).name})
        if time.monotonic() > deadline:
            raise RuntimeError(f"test pause at {where} not released within the timeout")
        time.sleep(0.05)


def _pause_before_promoting(point: dict[str, Any]) -> None:
    from hpcpipe.atomic import TMP_MARK

    prefix = f".{point['output']}{TMP_MARK}"
    for name in ("replace", "rename"):  # atomic_path: os.replace, or Path.rename (os.rename)
        real = getattr(os, name)

        def patched(src, dst, *args, _real=real, **kwargs):
            if Path(src).name.startswith(prefix):
                _pause(point, {"temporary": os.path.abspath(src), "final": os.path.abspath(dst)})
            return _real(src, dst, *args, **kwargs)

        setattr(os, name, patched)


def _pause_in_training(point: dict[str, Any]) -> None:
    from hpcpipe.runtime.environment import launcher_rank
    from hpcpipe.train.checkpoint import Checkpointer

    real = Checkpointer.on_step
    rank = launcher_rank()

    def on_step(self, epoch, step, total):
        real(self, epoch, step, total)
        global_step = (epoch - 1) * self.steps_per_epoch + step
        if global_step == point["after_step"] and rank == point.get("rank", 0):
            _pause(point, {"step": global_step, "rank": rank}, self.stop)

    Checkpointer.on_step = on_step


def install(argv: list[str], environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Install the pause the variable asks for, if it applies to this command line."""
    text = environ.get(ENV, "")
    if not text:
        return
    point = json.loads(text)
    if argv[:1] != [point["step"]]:
        return
    if "model" in point and (
        "--model" not in argv or argv[argv.index("--model") + 1] != point["model"]
    ):
        return
    if point["step"] == "preprocess":
        _pause_before_promoting(point)
    elif point["step"] == "train":
        _pause_in_training(point)
    else:
        raise ValueError(f"{ENV}: no pause point for step {point['step']!r}")


if __name__ == "__main__":
    del sys.path[0]  # this directory: the step sees the import path it would see without us
    install(sys.argv[1:])
    from hpcpipe.cli import main

    sys.exit(main())
