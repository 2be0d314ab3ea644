"""Without the SLURM extra, hpcpipe-slurm still registers and says how to install it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from snakemake_interface_common.exceptions import WorkflowError

from snakemake_executor_plugin_hpcpipe_slurm import missing

ROOT = Path(__file__).resolve().parents[2]


def test_the_stub_accepts_every_setting_the_shipped_profile_uses():
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    used = {k.removeprefix("hpcpipe-slurm-").replace("-", "_") for k in profile if k.startswith("hpcpipe-slurm-")}  # fmt: skip
    fields = {f.name for f in dataclasses.fields(missing.ExecutorSettings)}
    assert used and used <= fields, used - fields


def test_the_stub_refuses_to_run_naming_the_install_command():
    with pytest.raises(WorkflowError, match=r"pip install -e '\.\[slurm\]'"):
        missing.Executor(None, None)
