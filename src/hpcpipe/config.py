"""Config validation: JSON Schema (with defaults filled in) plus the cross-key rules.

Errors name the key, the value and the rule it breaks, all at once, before any job starts.
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from hpcpipe.config_checks import (
    DuplicateKeyError,
    builtin_calendar_problems,
    load_yaml,
    non_finite_problems,
    short,
)
from hpcpipe.generate.fields import FIELDS
from hpcpipe.models import unet_grid_problem
from hpcpipe.splits import sample_count
from hpcpipe.timeaxis import climatology_for

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "config.schema.yaml"


class ConfigError(ValueError):
    """The config breaks the schema or a cross-key rule; the message lists every problem."""


@functools.cache  # a new class per call cost a third of a validation (sweeps validate often)
def _with_defaults(cls: type[jsonschema.protocols.Validator]) -> type:
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: dict, instance: Any, schema: dict) -> Iterator:
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(cls, {"properties": set_defaults})


def load_schema(path: str | Path | None = None) -> dict:
    """The schema (read once per process: it is never changed, and parsing it took a tenth
    of a second of every Snakemake start)."""
    return _schema(str(path or SCHEMA_PATH))


@functools.cache
def _schema(path: str) -> dict:
    with open(path) as f:
        # libyaml's loader where PyYAML has it: 10x the pure-Python one
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _key(path: Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out.lstrip(".") or "(top level)"


def _describe(err: jsonschema.ValidationError) -> str:
    where = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        return f"{where}: {err.message} (schema rule: additionalProperties — check the spelling)"
    if err.validator in ("pattern", "oneOf") and "allowed" in err.schema:
        # Names that end up in store paths and commands, and keys of several forms: say in
        # words what they may be (a regex or a list of sub-schemas tells a user little).
        # For a key of a mapping (ingest.rename) the instance is the key itself.
        return (
            f"{where}: {short(err.instance)} is not allowed: {err.schema['allowed']} "
            f"(schema rule: {err.validator})"
        )
    # A long value appears in jsonschema's message whole (an 8 MB title, 8 MB of message).
    message = err.message.replace(repr(err.instance), short(err.instance))
    message = message if len(message) <= 300 else message[:300] + "..."
    return f"{where}: {message} (schema rule: {err.validator})"


def validate(
    config: dict, schema: dict | None = None, source: str = "config", section: str | None = None
) -> dict:
    """Validate ``config`` in place, filling in defaults; raise ConfigError naming every problem.

    With ``section``, the schema checks that top-level section only (the others are known
    valid: a sweep point changes one key), the cross-key rules still the whole config.
    """
    schema = schema or load_schema()
    if section is not None:  # no rule of the schema's top level joins two sections
        only = {section: schema["properties"][section]}
        schema = {**schema, "properties": only, "additionalProperties": True}
    validator = _with_defaults(jsonschema.Draft202012Validator)(
        schema, format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = non_finite_problems(config) + [_describe(e) for e in errors]
    if not problems:
        problems = list(_cross_key_problems(config))
    if problems:
        raise ConfigError(
            f"{source} is invalid ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  - "
            + "\n  - ".join(problems)
        )
    return config


def _date(text: str, key: str, problems: list[str]) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        problems.append(f"{key}: {text!r} is not a valid date (YYYY-MM-DD)")
        return None


def _builtin_variable_problems(ds: dict) -> list[str]:
    unknown = [v for v in ds["variables"] if v not in FIELDS]
    if not unknown:
        return []
    return [f"dataset.variables: {unknown} not in the built-in dataset (it has {sorted(FIELDS)})"]


def _path_problems(path: str | list[str]) -> list[str]:
    """ingest.path (one path or several) names files that exist."""
    if not path:
        return ["ingest.path: required when dataset.source is 'file'"]
    problems = []
    for i, p in enumerate([path] if isinstance(path, str) else path):
        key = "ingest.path" if isinstance(path, str) else f"ingest.path[{i}]"
        if not Path(p).exists():
            problems.append(f"{key}: {p!r} does not exist")
    return problems


def _split_periods(split: dict) -> tuple[dict[str, tuple[dt.date, dt.date]], list[str]]:
    """The valid periods of preprocess.split, and what is wrong with the others and overall."""
    problems: list[str] = []
    periods: dict[str, tuple[dt.date, dt.date]] = {}
    for name, (start, end) in split.items():
        a = _date(start, f"preprocess.split.{name}[0]", problems)
        b = _date(end, f"preprocess.split.{name}[1]", problems)
        if a and b:
            if b < a:
                problems.append(f"preprocess.split.{name}: end {end} is before start {start}")
            periods[name] = (a, b)
    names = sorted(periods, key=lambda n: periods[n][0])
    for x, y in itertools.pairwise(names):
        if periods[y][0] <= periods[x][1]:
            problems.append(f"preprocess.split: periods {x} and {y} overlap")
    return periods, problems


def _builtin_period_problems(c: dict, periods: dict[str, tuple[dt.date, dt.date]]) -> list[str]:
    """Each split period lies inside the built-in data and holds a sample."""
    problems = []
    b = c["dataset"]["builtin"]
    first = dt.date.fromisoformat(b["start"])
    last = first + dt.timedelta(days=b["n_days"] - 1)
    lags, leads = c["features"]["lags"], c["features"]["leads"]
    for name, (a, e) in periods.items():
        if a < first or e > last:
            problems.append(
                f"preprocess.split.{name}: {a}..{e} is outside the built-in data "
                f"({first}..{last}, dataset.builtin.start and n_days)"
            )
            continue
        i0, i1 = (a - first).days, (e - first).days + 1
        if sample_count((i0, i1), lags, leads) < 1:
            problems.append(
                f"preprocess.split.{name}: {i1 - i0} days are too few for features.lags "
                f"{lags} and features.leads {leads}"
            )
    return problems


def _builtin_climatology_problems(c: dict) -> list[str]:
    """The built-in data are daily: the climatology must fit that (timeaxis.FITS)."""
    try:
        climatology_for(c["preprocess"]["climatology"], "daily", "the built-in data")
    except ValueError as exc:
        return [str(exc)]
    return []


def _headline_lead_problems(c: dict) -> list[str]:
    lead, leads = c["evaluate"]["headline_lead"], c["features"]["leads"]
    if lead in leads:
        return []
    return [f"evaluate.headline_lead: {lead} is not one of features.leads {leads}"]


def unet_problems(c: dict, n_lat: int, n_lon: int, grid: str) -> list[str]:
    """The ``n_lat x n_lon`` grid named ``grid``, after preprocess.coarsen, suits the
    U-Net's depth (models.unet_grid_problem): for the built-in data here, for files at
    ingest's check before any job."""
    depth, coarsen = c["models"]["unet"]["depth"], c["preprocess"]["coarsen"]
    problem = unet_grid_problem(depth, n_lat // coarsen, n_lon // coarsen)
    if problem is None:
        return []
    return [
        f"models.unet.depth: {depth} {problem} ({grid} after preprocess.coarsen {coarsen}); "
        "lower models.unet.depth, change preprocess.coarsen or drop unet from train.models"
    ]


def _cross_key_problems(c: dict) -> Iterator[str]:
    builtin = c["dataset"]["source"] == "builtin"
    if builtin:
        yield from _builtin_variable_problems(c["dataset"])
    else:
        yield from _path_problems(c["ingest"]["path"])
    periods, problems = _split_periods(c["preprocess"]["split"])
    yield from problems
    calendar = builtin_calendar_problems(c["dataset"]["builtin"]) if builtin else []
    yield from calendar
    if builtin and periods and not calendar:
        yield from _builtin_period_problems(c, periods)
    if builtin:
        yield from _builtin_climatology_problems(c)
    yield from _headline_lead_problems(c)
    if builtin and "unet" in c["train"]["models"]:
        b = c["dataset"]["builtin"]
        yield from unet_problems(c, b["n_lat"], b["n_lon"], "dataset.builtin.n_lat x n_lon")


def load(path: str | Path, *overlays: str | Path) -> dict:
    """Read and validate a config file, with overlays that win key by key like Snakemake's
    ``--configfile A B`` (used by `hpcpipe check-config` and tests)."""
    config = _read(Path(path))
    for overlay in overlays:
        _merge(config, _read(Path(overlay)))
    names = " + ".join(map(str, (path, *overlays)))
    return validate(config, source=names)


def _merge(base: dict, new: dict) -> dict:
    """Snakemake's config update: nested mappings merge, everything else is replaced."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def _read(p: Path) -> dict:
    try:
        config = load_yaml(p) or {}
    except DuplicateKeyError as exc:
        raise ConfigError(str(exc)) from None
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys")
    return config


def as_json(obj: Any) -> str:
    """Compact, key-sorted JSON: what rules pass to `hpcpipe <step> --params`."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))
