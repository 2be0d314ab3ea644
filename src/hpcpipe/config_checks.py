"""Config checks beyond the schema: duplicate YAML keys, non-finite numbers, the calendar's
range for the built-in data, and short messages whatever the size of a value.

Plain Python and PyYAML (the config check never imports xarray).
"""

from __future__ import annotations

import datetime as dt
import math
import reprlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

# The days numpy's datetime64[ns] holds: the built-in data's time axis must lie within them.
FIRST_DAY, LAST_DAY = dt.date(1677, 9, 22), dt.date(2262, 4, 11)
_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = 8
_REPR.maxdict = 8


def short(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters: error messages stay short."""
    return _REPR.repr(value)


class DuplicateKeyError(ValueError):
    """A mapping in a YAML file repeats a key; the message names the file, line and key."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    source = "config"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *anchor" merges a mapping: not a key of its own
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in seen:
                raise DuplicateKeyError(
                    f"{self.source}, line {line}: key {short(key)} is given twice (first on "
                    f"line {seen[key]}); YAML keeps only the last, so remove one"
                )
            if isinstance(key, str | int | float | bool):
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: Path) -> Any:
    """The YAML document of ``path``, refusing duplicate keys."""
    text = path.read_text()
    loader = _UniqueKeyLoader(text)
    loader.source = str(path)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def check_duplicate_keys(paths: Iterable[str | Path]) -> None:
    """Every config file and overlay given to Snakemake, read again for duplicate keys."""
    for p in paths:
        if Path(p).is_file():
            load_yaml(Path(p))


def _walk(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{key}[{i}]")
    else:
        yield key, obj


def non_finite_problems(config: dict) -> list[str]:
    """Keys whose value is NaN or infinite (YAML .nan, .inf): no rule of the schema holds
    for them (every comparison with NaN is false), so they are refused here."""
    return [
        f"{key}: {value!r} is not a finite number"
        for key, value in _walk(config)
        if isinstance(value, float) and not math.isfinite(value)
    ]


def builtin_calendar_problems(builtin: dict) -> list[str]:
    """The built-in data's daily time axis ends within numpy's datetime64[ns] range."""
    start = dt.date.fromisoformat(builtin["start"])
    try:
        last = start + dt.timedelta(days=builtin["n_days"] - 1)
    except OverflowError:
        last = None
    if start < FIRST_DAY:
        return [
            f"dataset.builtin.start: {builtin['start']} is before {FIRST_DAY}, the first date "
            "of the built-in data's calendar (numpy datetime64[ns])"
        ]
    if last is None or last > LAST_DAY:
        return [
            f"dataset.builtin.n_days: {builtin['n_days']} days from {builtin['start']} end "
            f"after {LAST_DAY}, the last date of the built-in data's calendar "
            "(numpy datetime64[ns]); use fewer days or an earlier dataset.builtin.start"
        ]
    return []
