"""Hyper-parameter sweeps: the config's ``sweep`` section -> the runs to train and evaluate.

A sweep point sets some keys under ``train.*`` and ``models.<name>.*`` (dotted). Each model
trains once per seed and per *distinct point of its own keys*: a key of another model's
section does not multiply its runs. A run is named by a short hash of the values that concern
it (``cnn/0-3f9a2c1b7e``: model, seed, point), so its id, its paths and its params stay the
same as long as its values do: adding points trains only the new runs, a changed value is a
new run (the old one stays on disk, nothing is deleted), and a run without swept values is
the plain run of today (``cnn/0``).

Everything here runs while Snakemake parses the workflow (also once in every SLURM job), so
it is cheap: the number of runs is known before any is built, every value is checked once
against the schema (not every point), and each run's params are made once, as a string.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcpipe.config import ConfigError, as_json, load_schema, validate
from hpcpipe.config_checks import short

POINT_ID_CHARS = 10  # hex digits of a point's hash: collisions unlikely up to 10^5 points
NOT_SWEPT = ("models", "seeds")  # train keys that are the fan-out itself
RANDOM_DIGITS = 4  # significant digits of a random point's values: readable, stable ids
DISTRIBUTIONS = ("uniform", "log_uniform")


class SweepError(ConfigError):
    """The sweep section cannot serve; the message names the key or the point."""


@dataclass(frozen=True)
class Run:
    """One training run: a model, a seed and the swept values that concern this model."""

    model: str
    seed: int
    point: str = ""  # "" outside a sweep (and for a model no swept key concerns)
    values: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def run_dir(self) -> str:
        """The run's directory under results/models/{model}/: ``0`` or ``0-<point>``."""
        return f"{self.seed}-{self.point}" if self.point else str(self.seed)

    @property
    def id(self) -> str:
        return f"{self.model}/{self.run_dir}"

    def path(self, pattern: str) -> str:
        """A rule's per-run output pattern ({model}, {seed}, {point}) for this run."""
        point = f"-{self.point}" if self.point else ""
        return pattern.format(model=self.model, seed=self.seed, point=point)


def point_id(values: dict[str, Any]) -> str:
    """The short hash of a point's values (empty for no values)."""
    if not values:
        return ""
    return hashlib.sha256(as_json(values).encode()).hexdigest()[:POINT_ID_CHARS]


def parse_run_dir(run_dir: str) -> tuple[int, str]:
    """``0-3f9a2c1b7e`` -> (0, "3f9a2c1b7e"); ``0`` -> (0, "")."""
    seed, _, point = run_dir.partition("-")
    return int(seed), point


def _concerns(key: str, model: str) -> bool:
    return key.startswith("train.") or key.startswith(f"models.{model}.")


def swept_keys(sweep: dict | None) -> list[str]:
    return sorted((sweep or {}).get("parameters", {}))


# --- checks, before anything is expanded ------------------------------------------------------


def _key_problem(key: str, schema: dict, models: list[str]) -> str | None:
    parts = key.split(".")
    train = schema["properties"]["train"]["properties"]
    sections = schema["properties"]["models"]["properties"]
    if parts[0] == "train" and len(parts) == 2:
        if parts[1] in NOT_SWEPT:
            return f"{key} is the fan-out itself; list its values there, not in the sweep"
        if parts[1] in train:
            return None
    elif parts[0] == "models" and len(parts) == 3 and parts[1] in sections:
        if parts[2] not in sections[parts[1]]["properties"]:
            keys = sorted(sections[parts[1]]["properties"])
            return f"{key}: models.{parts[1]} has no key {parts[2]!r} (it has {keys})"
        if parts[1] not in models:
            return f"{key}: {parts[1]} is not in train.models {models}, so no run would use it"
        return None
    return (
        f"{key} is not a key that can be swept: any key under train.* (but models and seeds) "
        "or models.<name>.*, dotted (train.lr, models.cnn.channels)"
    )


def _sub_schema(key: str, schema: dict) -> dict:
    node = schema
    for part in key.split("."):
        node = node["properties"][part]
    return node


def _spec_problems(key: str, spec: Any, method: str, schema: dict) -> list[str]:
    """A grid key needs a non-empty list; a random key a list, values or a distribution."""
    if isinstance(spec, list):
        return [] if spec else [f"sweep.parameters.{key}: an empty list gives no points"]
    if method == "grid":
        return [f"sweep.parameters.{key}: method grid takes a list of values, not {short(spec)}"]
    if "values" in spec:
        return [] if spec["values"] else [f"sweep.parameters.{key}.values: empty"]
    low, high, dist = spec.get("low"), spec.get("high"), spec.get("distribution")
    problems = []
    if _sub_schema(key, schema).get("type") != "number":
        problems.append(
            f"sweep.parameters.{key}: a {dist} distribution draws real numbers, but {key} is "
            f"{_sub_schema(key, schema).get('type')}: give {{values: [...]}} instead"
        )
    if not low < high:
        problems.append(f"sweep.parameters.{key}: low {low} must be below high {high}")
    if dist == "log_uniform" and low <= 0:
        problems.append(f"sweep.parameters.{key}: log_uniform needs low > 0, not {low}")
    return problems


def _values_of(spec: Any) -> list[Any]:
    """The values a key takes (a distribution: its two ends, which bound every draw)."""
    if isinstance(spec, list):
        return spec
    if "values" in spec:
        return spec["values"]
    return [spec["low"], spec["high"]]


def _set(config: dict, key: str, value: Any) -> None:
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = value


def _value_problems(config: dict, parameters: dict, schema: dict) -> list[str]:
    """Every value of every key, set into the config, passes the schema and the cross-key
    rules. Value by value, not point by point: no rule joins two sweepable keys today, so a
    point is valid when each of its values is (a check of 10,000 points would take minutes);
    the schema checks only the key's section, the rest of the config being valid already.
    """
    base = {k: v for k, v in config.items() if k != "sweep"}
    problems = []
    for key, spec in parameters.items():
        for value in dict.fromkeys(map(as_json, _values_of(spec))):
            section = key.split(".")[0]
            trial = {**base, section: copy.deepcopy(base[section])}  # only it is changed
            _set(trial, key, json.loads(value))
            try:
                validate(trial, schema, f"sweep point with {key}={value}", section)
            except ConfigError as exc:
                problems.append(str(exc).replace("\n  - ", " "))
    return problems


def with_each_value(config: dict, key: str) -> Iterator[dict]:
    """``config`` with each value the sweep gives ``key`` (itself when the key is not swept):
    for checks against the data, which the schema cannot make (a U-Net depth and a file's grid).
    """
    spec = ((config.get("sweep") or {}).get("parameters") or {}).get(key)
    if spec is None:
        yield config
        return
    for value in _values_of(spec):
        trial = copy.deepcopy(config)
        _set(trial, key, value)
        yield trial


def run_count(sweep: dict, models: list[str], seeds: list[int]) -> int:
    """How many runs the sweep makes, without making them."""
    params = sweep["parameters"]
    if sweep["method"] == "random":
        return sum(sweep["n"] if any(_concerns(k, m) for k in params) else 1 for m in models) * len(
            seeds
        )
    sizes = {k: len(v) for k, v in params.items()}
    per_model = [math.prod(n for k, n in sizes.items() if _concerns(k, m)) for m in models]
    return sum(per_model) * len(seeds)


def check(config: dict, schema: dict | None = None) -> None:
    """SweepError naming every problem of ``config['sweep']`` (a validated config)."""
    sweep = config.get("sweep")
    if sweep is None:
        return
    schema = schema or load_schema()
    models = config["train"]["models"]
    parameters = sweep["parameters"]
    problems = [p for k in parameters if (p := _key_problem(k, schema, models))]
    if not parameters:
        problems.append("sweep.parameters: empty, so the sweep has no points")
    if not problems:
        problems = [
            p for k, s in parameters.items() for p in _spec_problems(k, s, sweep["method"], schema)
        ]
    if not problems:
        n = run_count(sweep, models, config["train"]["seeds"])
        if n > sweep["max_runs"]:
            problems.append(
                f"sweep: {n} runs (models x seeds x points) are more than sweep.max_runs "
                f"{sweep['max_runs']}; raise it if you mean it"
            )
    if not problems:
        problems = _value_problems(config, parameters, schema)
    if problems:
        raise SweepError(
            f"sweep is invalid ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  - "
            + "\n  - ".join(problems)
        )


# --- expansion ------------------------------------------------------------------------------


def points(sweep: dict) -> Iterator[dict[str, Any]]:
    """Every point of the sweep, over all its keys (grid: in the order of the lists)."""
    params = sweep["parameters"]
    keys = sorted(params)
    if sweep["method"] == "grid":
        for combo in itertools.product(*(params[k] for k in keys)):
            yield dict(zip(keys, combo, strict=True))
        return
    # One generator, one draw per key and point, keys in sorted order: point i is the same
    # whatever n is, so raising n adds runs and keeps the others.
    rng = np.random.default_rng(sweep["seed"])
    for _ in range(sweep["n"]):
        yield {k: _draw(params[k], float(rng.random())) for k in keys}


def _draw(spec: Any, u: float) -> Any:
    values = spec if isinstance(spec, list) else spec.get("values")
    if values is not None:
        return values[min(int(u * len(values)), len(values) - 1)]
    low, high = float(spec["low"]), float(spec["high"])
    if spec["distribution"] == "log_uniform":
        x = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        x = low + u * (high - low)
    return float(f"{x:.{RANDOM_DIGITS}g}")


def runs(sweep: dict | None, models: Iterable[str], seeds: Iterable[int]) -> list[Run]:
    """The runs, model by model, seed by seed, point by point (first appearance)."""
    models, seeds = list(models), list(seeds)
    if sweep is None:
        return [Run(m, s) for m in models for s in seeds]
    all_points = list(points(sweep))
    out = []
    for m in models:
        own: dict[str, dict[str, Any]] = {}
        for p in all_points:
            values = {k: v for k, v in p.items() if _concerns(k, m)}
            own.setdefault(point_id(values), values)
        out += [Run(m, s, pid, values) for s in seeds for pid, values in own.items()]
    return out


def train_params(config: dict, run: Run) -> str:
    """The params (JSON) of one run's training: the train section without the fan-out, the
    model's section, each with the run's values; and the point itself, so that its manifest
    records the values by name. A run without a point gets exactly the params of a plain run.
    """
    train = {k: v for k, v in config["train"].items() if k not in NOT_SWEPT}
    model = dict(config["models"][run.model])
    for key, value in run.values.items():
        section, *_, name = key.split(".")
        (train if section == "train" else model)[name] = value
    params: dict[str, Any] = {"train": train, "model": model}
    if run.point:
        params["point"] = {"id": run.point, "values": run.values}
    return as_json(params)


def plan(config: dict) -> dict[tuple[str, str], tuple[Run, str]]:
    """(model, run_dir) -> (run, its train params): what the workflow's rules look up per job.

    Checked first (SweepError); the params are made here once, so a job's params are a
    dictionary lookup (Snakemake evaluates them for every job at every planning).
    """
    check(config)
    found = runs(config.get("sweep"), config["train"]["models"], config["train"]["seeds"])
    return {(r.model, r.run_dir): (r, train_params(config, r)) for r in found}


def repeated_draws(config: dict, planned: dict) -> str | None:
    """What to tell the user when a random sweep drew some points more than once (each
    point is one run, so the sweep has fewer runs than asked for), else None."""
    sweep = config.get("sweep")
    if sweep is None:
        return None
    asked = run_count(sweep, config["train"]["models"], config["train"]["seeds"])
    if len(planned) >= asked:
        return None
    return (
        f"sweep: {asked - len(planned)} of {asked} random draws repeat a point drawn before "
        f"(discrete values); the sweep has {len(planned)} runs. Raise sweep.n for more."
    )


def spec(config: dict) -> str:
    """What the summary needs to name every run (JSON): models, seeds and the sweep."""
    t = config["train"]
    return as_json({"models": t["models"], "seeds": t["seeds"], "sweep": config.get("sweep")})


def runs_of_spec(text: str) -> list[Run]:
    s = json.loads(text)
    return runs(s["sweep"], s["models"], s["seeds"])
