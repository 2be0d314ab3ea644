"""A step of the table of steps (:mod:`hpcpipe.steps`): its command-line arguments, and
which of them are the paths it reads and writes (its provenance)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Role = Literal["input", "output", "option"]


@dataclass(frozen=True)
class Arg:
    """One command-line argument of a step; inputs and outputs are paths."""

    flag: str
    role: Role
    help: str = ""
    many: bool = False  # several paths (nargs="+")
    required: bool = True
    type: Callable[[str], Any] | None = None
    default: Any = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Step:
    name: str
    help: str
    run: Callable[[argparse.Namespace], None]
    args: tuple[Arg, ...]

    def paths(self, ns: argparse.Namespace, role: Role) -> list[str]:
        """The paths of ``role`` ("input" or "output") given on the command line, in order."""
        out: list[str] = []
        for arg in self.args:
            value = getattr(ns, arg.dest, None)
            if arg.role == role and value is not None:
                out += list(value) if arg.many else [value]
        if role == "input" and not getattr(ns, "metrics", None) and getattr(ns, "runs", None):
            out += [str(p) for p in metrics_paths(ns)]  # the runs' metrics, as a pattern
        return out


def metrics_paths(ns: argparse.Namespace) -> list[Path]:
    """Every run's metrics.json: given one by one, or as the runs' spec and a path pattern
    (what the workflow passes: 10,000 paths would not fit in one command line)."""
    from hpcpipe.sweep import runs_of_spec

    if getattr(ns, "metrics", None):
        return [Path(p) for p in ns.metrics]
    if not (ns.runs and ns.metrics_pattern):
        raise SystemExit(f"hpcpipe {ns.step.name}: give --metrics, or --runs and --metrics-pattern")
    return [Path(r.path(ns.metrics_pattern)) for r in runs_of_spec(ns.runs)]
