from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hpcpipe.runtime.launch import launch


def test_ranks_get_torchrun_variables(tmp_path: Path):
    code = "import os, pathlib; pathlib.Path(os.environ['OUT'], os.environ['RANK']).write_text(os.environ['WORLD_SIZE'] + ' ' + os.environ['MASTER_PORT'])"
    import os

    os.environ["OUT"] = str(tmp_path)
    assert launch(3, [sys.executable, "-c", code]) == 0
    texts = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert sorted(texts) == ["0", "1", "2"] and len(set(texts.values())) == 1
    assert texts["0"].startswith("3 ")


def test_a_failing_rank_fails_the_launch_and_stops_the_others():
    code = "import os, sys, time\nif os.environ['RANK'] == '1': sys.exit(3)\ntime.sleep(60)"
    assert launch(2, [sys.executable, "-c", code]) == 3


def test_more_ranks_than_visible_gpus_is_refused_before_starting():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0,1")
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.run(
        [sys.executable, "-m", "hpcpipe.cli", "launch", "-n", "3", "true"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "3 ranks but only 2 GPU(s) visible" in proc.stderr and "at most 2 ranks" in proc.stderr
