"""No value from the config, the data or the command line reaches a shell unquoted, and every
step writes under the workflow's own directories.

Names that become paths or arguments (variables, models, renames) are refused by the schema
(the corpus shows it); free text (report.title) and paths (ingest.path) are allowed and must
arrive quoted. Each test uses a sentinel file that any executed command would create.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
import xarray as xr
import yaml
from testdata import SPLIT, make_raw
from workdir import make_workdir, snakemake

pytestmark = pytest.mark.workflow

# Every way a shell could be made to run `touch SENTINEL`.
ATTACKS = "$(touch {s}) `touch {s}`; touch {s} | touch {s} && touch {s} '\" > {s}.redirect\nx"
WORKFLOW_DIRS = ("data", "results", "logs")


def attack(sentinel: Path) -> str:
    return ATTACKS.format(s=sentinel)


def assert_nothing_ran(where: Path) -> None:
    assert not list(where.glob("pwned*")), list(where.glob("pwned*"))


def test_a_title_with_shell_characters_is_passed_quoted(pipeline_run: Path, tmp_path: Path):
    wd = tmp_path / "wd"
    shutil.copytree(pipeline_run, wd, symlinks=True)
    overlay = tmp_path / "title.yaml"
    overlay.write_text(yaml.safe_dump({"report": {"title": attack(tmp_path / "pwned")}}))
    proc = snakemake(wd, "--configfile", "config/config.yaml", str(overlay))
    assert "rule summary:" in proc.stdout + proc.stderr  # the step did run with that title
    assert_nothing_ran(tmp_path)


def test_input_paths_with_shell_characters_are_passed_quoted(tmp_path: Path):
    """Two yearly files (ingest.path as a list) whose names would each run a command."""
    data = tmp_path / "my data"
    data.mkdir()
    raw = make_raw()
    files = [data / "y2000 $(touch pwned).nc", data / "y2001;touch pwned`touch pwned`.nc"]
    raw.isel(time=slice(0, 366)).to_netcdf(files[0])
    raw.isel(time=slice(366, None)).to_netcdf(files[1])
    overlay = {
        "dataset": {"source": "file"},
        "ingest": {"path": [str(f) for f in files]},
        "preprocess": {"split": SPLIT},
    }
    wd = make_workdir(tmp_path / "wd", overlay)
    snakemake(wd, "data/raw.zarr")  # the ingest step only
    for where in (wd, data, tmp_path):
        assert_nothing_ran(where)
    stored = xr.open_zarr(wd / "data" / "raw.zarr")["t2m"].reset_coords(drop=True)
    xr.testing.assert_allclose(stored.load(), raw["t2m"])


@pytest.mark.parametrize(
    "target",
    [
        "results/eval/cnn;touch pwned/0/metrics.json",
        "results/models/$(touch pwned)/0/model.pt",
        "results/eval/cnn/0`touch pwned`/metrics.json",
        "results/eval/../../outside/0/metrics.json",
    ],
    ids=["semicolon", "command-substitution", "backticks", "parent-dir"],
)
def test_targets_with_shell_characters_match_no_rule(tmp_path: Path, target: str):
    """Wildcards come from the command line too: their constraints refuse such values."""
    wd = make_workdir(tmp_path)
    proc = snakemake(wd, target, check=False)
    assert proc.returncode != 0
    assert "No rule to produce" in proc.stdout + proc.stderr
    assert_nothing_ran(wd)
    assert not (wd / "results").exists()


def test_every_step_writes_under_the_workflow_directories(pipeline_run: Path):
    """Every output and log of every job lies under data/, results/ or logs/, without '..'."""
    proc = snakemake(pipeline_run, "-n", "--forceall")
    written = []
    for line in proc.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key in ("output", "log"):
            written += [p.strip() for p in value.split(",")]
    assert len(written) > 20, proc.stdout[-2000:]
    for path in written:
        parts = Path(path).parts
        assert not Path(path).is_absolute() and ".." not in parts, path
        assert parts[0] in WORKFLOW_DIRS, path


# What the rules' shell commands hold today (rule -> every {field}, in order). The audit below
# requires at least these: a parser that stopped finding commands or fields fails it instead
# of passing with nothing to check. A new rule or field is added here.
SHELL_FIELDS = {
    "generate": ["params.cfg:q", "output:q", "threads", "log:q"],
    "ingest": ["params.cfg:q", "input:q", "output:q", "threads", "log:q"],
    "check_raw": ["params.cfg:q", "input:q", "output:q", "threads", "log:q", "wildcards:q"],
    "preprocess": [
        "params.cfg:q", "input.raw:q", "output.store:q", "output.stats:q", "threads", "log:q",
    ],
    "thresholds": ["params.cfg:q", "input:q", "output:q", "threads", "log:q"],
    "features": [
        "params.cfg:q", "input:q", "output.train:q", "output.val:q", "output.test:q", "threads",
        "log:q",
    ],
    "train": [
        "resources.tasks", "params.cfg:q", "input.train:q", "input.val:q", "wildcards.model:q",
        "wildcards.seed:q", "output.model:q", "output.history:q", "threads", "log:q",
        "wildcards.model:q", "wildcards.seed:q", "wildcards.point:q",
    ],
    "predict": [
        "params.cfg:q", "input.model:q", "input.features:q", "input.preprocessed:q",
        "input.stats:q", "output:q", "threads", "log:q",
    ],
    "evaluate": [
        "params.cfg:q", "input.forecasts:q", "input.history:q", "input.features:q",
        "input.preprocessed:q", "input.thresholds:q", "input.stats:q", "params.external:q",
        "output.metrics:q", "output.table:q", "output.skill:q", "output.maps:q", "output.loss:q",
        "threads", "log:q",
    ],
    "export_run": [
        "params.rule:q", "params.cfg:q", "input.model:q", "input.features:q", "input.preprocessed:q",
        "input.stats:q", "output:q", "threads", "log:q",
    ],
    "summary": [
        "params.runs:q", "params.pattern:q", "output.table:q", "output.chart:q", "params.title:q", "output.provenance:q",
        "output.landing:q", "log:q",
    ],
    "leaderboard": [
        "params.runs:q", "params.pattern:q", "output.table:q", "output.chart:q",
        "output.page:q", "log:q",
    ],
    "usage_table": ["input:q", "output.table:q", "output.chart:q", "log:q"],
    "optimize_variant": [
        "params.cfg:q", "input.model:q", "input.train:q", "wildcards.variant:q",
        "output.variant:q", "threads", "log:q",
    ],
    "optimize_distill": [
        "params.cfg:q", "input.teachers:q", "input.train:q", "output.student:q", "threads", "log:q",
    ],
    "optimize_score": [
        "params.cfg:q", "input.variant:q", "input.teacher:q", "input.features:q",
        "input.preprocessed:q", "input.thresholds:q", "output.metrics:q", "threads", "log:q",
    ],
    "optimize_summary": ["input:q", "output.table:q", "output.chart:q", "log:q"],
}  # fmt: skip
# Numbers Snakemake itself makes, and a wildcard its constraint limits to digits.
UNQUOTED_OK = {
    "threads", "resources.tasks", "resources.mem_mb", "resources.runtime", "wildcards.seed",
}  # fmt: skip
NO_PARAMS = {"usage_table", "optimize_summary"}  # depend on no config: manifests, metrics


def test_steps_quote_every_value_in_their_shell_commands():
    """An audit that stays true: in the rules' shell commands every {value} is quoted (:q),
    except numbers Snakemake itself makes (threads, resources) and constrained wildcards."""
    root = Path(__file__).resolve().parents[2]
    commands = {}
    for smk in sorted((root / "workflow" / "rules").glob("*.smk")):
        commands.update(_shell_commands(smk))
    assert sorted(commands) == sorted(SHELL_FIELDS), "rules with a shell command"
    unquoted = []
    for rule, command in commands.items():
        fields = re.findall(r"\{([^{}]+)\}", command)
        assert command.startswith("hpcpipe "), (rule, command)
        assert len(fields) >= len(SHELL_FIELDS[rule]), (rule, fields)
        missing = Counter(SHELL_FIELDS[rule]) - Counter(fields)
        assert not missing, f"{rule}: {sorted(missing)} no longer in {command!r}"
        assert "log:q" in fields, rule
        assert rule in NO_PARAMS or any(f.startswith("params.") for f in fields), rule
        unquoted += [
            f"{rule}: {{{f}}}" for f in fields if not f.endswith(":q") and f not in UNQUOTED_OK
        ]
    assert not unquoted, unquoted


RULE = re.compile(r"^[ \t]*rule[ \t]+(\w+)[ \t]*:", re.MULTILINE)
SHELL = re.compile(r"^[ \t]*shell:[ \t]*\n", re.MULTILINE)


def _shell_commands(smk: Path) -> dict[str, str]:
    """Rule -> its shell command, the string literals of its `shell:` directive joined as
    Python joins them. A rule without one fails here, by name."""
    text = smk.read_text()
    starts = list(RULE.finditer(text))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    out = {}
    for m, end in zip(starts, ends, strict=False):  # common.smk has no rule
        block = text[m.end() : end]
        shell = SHELL.search(block)
        assert shell, f"{smk.name}: rule {m.group(1)} has no shell command"
        literals = []
        for line in block[shell.end() :].splitlines():
            if not line.strip().startswith('"'):
                break
            literals.append(line.strip())
        assert literals, f"{smk.name}: rule {m.group(1)}: no string after shell:"
        out[m.group(1)] = ast.literal_eval("(" + "\n".join(literals) + ")")
    return out
