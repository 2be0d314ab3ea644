from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcpipe.runtime.launch import launch

# A rank that fails must bring the launch down at once, not after its peers' own end (60 s
# here): a few seconds cover starting two interpreters on a busy 2-core machine.
STOPPED_WITHIN_S = 10.0
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@pytest.fixture(autouse=True)
def _local_launch(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local ranks in this process: not srun (inside a SLURM job launch() would exec it), no
    GPU count (these ranks are plain Python), and launch()'s signal forwarding undone after."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    saved = {s: signal.getsignal(s) for s in FORWARDED}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_ranks_get_torchrun_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    code = "import os, pathlib; pathlib.Path(os.environ['OUT'], os.environ['RANK']).write_text(os.environ['WORLD_SIZE'] + ' ' + os.environ['MASTER_PORT'])"
    monkeypatch.setenv("OUT", str(tmp_path))
    assert launch(3, [sys.executable, "-c", code]) == 0
    texts = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert sorted(texts) == ["0", "1", "2"] and len(set(texts.values())) == 1
    assert texts["0"].startswith("3 ")


# Rank 0 would sleep 60 s; it records a SIGTERM, or its own end if nothing stops it. Rank 1
# fails (exit 3) as soon as rank 0 is ready to record the signal.
RANKS = """
import os, pathlib, signal, sys, time
out = pathlib.Path(os.environ["OUT"])
if os.environ["RANK"] == "0":
    def stopped(signum, frame):
        (out / "rank0-stopped").write_text(str(signum))
        sys.exit(0)
    signal.signal(signal.SIGTERM, stopped)
    (out / "rank0-ready").touch()
    time.sleep(60)
    (out / "rank0-finished").touch()
else:
    deadline = time.monotonic() + 30
    while not (out / "rank0-ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    sys.exit(3)
"""


def test_a_failing_rank_fails_the_launch_and_stops_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("OUT", str(tmp_path))
    t0 = time.monotonic()
    assert launch(2, [sys.executable, "-c", RANKS]) == 3  # the failing rank's status
    took = time.monotonic() - t0
    assert (tmp_path / "rank0-ready").exists()  # rank 0 was running when rank 1 failed
    assert not (tmp_path / "rank0-finished").exists(), "rank 0 ran to its end"
    stopped = tmp_path / "rank0-stopped"
    assert stopped.exists() and stopped.read_text() == str(int(signal.SIGTERM))
    assert took < STOPPED_WITHIN_S, f"the launch took {took:.1f} s to stop the other rank"


def test_more_ranks_than_visible_gpus_is_refused_before_starting():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1")
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "hpcpipe.cli", "launch", "-n", "3", "true"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "3 ranks but only 2 GPU(s) visible" in proc.stderr and "at most 2 ranks" in proc.stderr
