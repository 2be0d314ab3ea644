"""`hpcpipe <step>`: one subcommand per pipeline step, called by the workflow's rules.

Rules pass explicit paths and the config section a step depends on as JSON (--params), so
every step is also runnable by hand. The steps and their arguments are a table
(:mod:`hpcpipe.steps`); running one is :func:`hpcpipe.runner.run_step`. Besides the steps:
`launch` (start N ranks of a command) and three queries, `provenance`, `check-config` and
`usage`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from hpcpipe import logs
from hpcpipe.steps import BY_NAME, STEPS, Step


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object (the --params and --dask of a step)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


# What every step accepts besides its own inputs, outputs and options.
COMMON: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--log", {"help": "log file (the rule's log:)"}),
    ("--threads", {"type": int, "help": "CPUs granted (ignored inside SLURM, which says)"}),
    ("--rule", {"help": "the Snakemake rule ({rule}), recorded with the usage"}),
    ("--wildcards", {"help": "its wildcards ({wildcards}: model=cnn,seed=0)"}),
    ("--mem-mb", {"type": int, "help": "memory the rule asked for, MB (recorded)"}),
    ("--runtime", {"type": int, "help": "time the rule asked for, minutes (recorded)"}),
    ("--params", {"type": json_object, "default": {}, "help": "the step's config, as JSON"}),
    ("--dask", {"type": json_object, "help": "the config's runtime section `dask` as JSON "
                "(mode, address, jobqueue, ...); default: $HPCPIPE_DASK, which the workflow "
                "sets; HPCPIPE_DASK_MODE and the other HPCPIPE_DASK_* variables override "
                "single keys"}),
)  # fmt: skip


def _add_step(sub: Any, step: Step) -> None:
    p = sub.add_parser(step.name, help=step.help, description=step.help)
    p.set_defaults(step=step)
    for flag, kwargs in COMMON:
        p.add_argument(flag, **kwargs)
    for arg in step.args:
        kwargs = {"required": arg.required, "help": arg.help or None}
        if arg.many:
            kwargs["nargs"] = "+"
        if arg.type is not None:
            kwargs["type"] = arg.type
        if arg.default is not None:
            kwargs["default"] = arg.default
        p.add_argument(arg.flag, **kwargs)


def cmd_provenance(ns: argparse.Namespace) -> None:
    from hpcpipe.provenance import ProvenanceError, check, describe

    if not os.path.exists(ns.output):
        raise ProvenanceError(
            f"{ns.output}: no such file or directory (run it in the workflow dir)"
        )
    print(describe(ns.output))
    if ns.check:
        problems = check(ns.output)
        if problems:
            raise ProvenanceError(f"{len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        print(f"{ns.output}: every output in the chain matches its manifest")


def cmd_check_config(ns: argparse.Namespace) -> None:
    from hpcpipe.config import load

    config = load(ns.config, *ns.overlays)
    names = " + ".join([ns.config, *ns.overlays])
    if external := config["evaluate"].get("external"):
        # The stores made elsewhere, as the workflow checks them before any job
        from hpcpipe.forecasts import plan_problems

        if problems := plan_problems(external, config):
            raise ValueError("; ".join(problems))
    if config["dataset"]["source"] == "file":
        # The same check the workflow makes before it starts: can the data serve the config?
        from hpcpipe.ingest import check_config_against_file

        counts = check_config_against_file(config).counts
        print(f"{names}: valid; samples per split {counts}")
        return
    print(f"{names}: valid")


def cmd_usage(ns: argparse.Namespace) -> None:
    from hpcpipe.usage_report import rows, table, write_chart, write_csv

    data = rows(ns.dir)
    if not data:  # (the workflow's usage_table step writes an empty table instead)
        raise ValueError(f"{ns.dir}: no step has recorded its usage here (run the workflow)")
    print(table(data))
    csv_path = ns.csv or os.path.join(ns.dir, "results", "usage.csv")
    write_csv(data, csv_path)
    if ns.chart:
        write_chart(data, ns.chart)


def _add_queries(sub: Any) -> None:
    sub.add_parser(
        "launch", help="start N local ranks of a command, like srun -n N (launch -n N CMD...)"
    )
    p = sub.add_parser("provenance", help="where an output came from (run in the workflow dir)")
    p.add_argument("output")
    p.add_argument("--check", action="store_true", help="verify every checksum along the chain")
    p.set_defaults(query=cmd_provenance)
    p = sub.add_parser(
        "check-config",
        help="validate a config file (and overlays, later ones win) and the dataset it names",
    )
    p.add_argument("config")
    p.add_argument("overlays", nargs="*", help="overlays, as in snakemake --configfile A B")
    p.set_defaults(query=cmd_check_config)
    p = sub.add_parser(
        "usage", help="requested vs used memory, time and CPU of every step run (a trace)"
    )
    p.add_argument("dir", nargs="?", default=".", help="the workflow directory (default: .)")
    p.add_argument("--csv", help="where the table goes (default: DIR/results/usage.csv)")
    p.add_argument("--chart", help="a PNG of requested vs used memory and time per rule")
    p.set_defaults(query=cmd_usage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")
    for step in STEPS:
        _add_step(sub, step)
    _add_queries(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # a process launcher, not a step: no logging or Dask set-up
        from hpcpipe.runtime.launch import main as launch_main

        return launch_main(argv[1:])
    ns = build_parser().parse_args(argv)
    if ns.command in BY_NAME:
        from hpcpipe.runner import run_step

        return run_step(ns.step, ns)
    logs.setup(None)  # a query: answers on stdout, errors on stderr
    try:
        ns.query(ns)
    except ValueError as exc:
        print(f"hpcpipe {ns.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
