"""The validation corpus: broken configs and broken datasets, as data.

Each case builds what it needs in a directory of its own and returns the config overlay a
user would add (`snakemake --configfile config/config.yaml overlay.yaml`), or the raw text of
an overlay. ``expect`` lists words the user must see: the key, file or variable at fault and
what is wrong with it; ``{dir}`` stands for the case's directory. A case whose problem can be
known before any job starts has ``before_jobs=True`` (the default); the others fail in the
ingest job, with the same kind of message.

tests/validation/test_corpus.py runs every case through `snakemake` and `hpcpipe
check-config`; docs/validation.md lists them with their messages.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from testdata import SPLIT, make_raw

Overlay = dict[str, Any] | str


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], Overlay]
    expect: tuple[str, ...]
    before_jobs: bool = True

    def expected(self, where: Path) -> list[str]:
        return [e.replace("{dir}", str(where)) for e in self.expect]


def config_case(id: str, overlay: Overlay | Callable[[Path], Overlay], *expect: str) -> Case:
    make = overlay if callable(overlay) else (lambda _d: overlay)
    return Case(id, make, expect)


# Values that would run a command if they reached a shell unquoted: each would create the
# file `pwned` in the case's directory (the tests check that it never appears).
def _shell(template: str) -> Callable[[Path], str]:
    return lambda d: template.format(pwned=d / "pwned")


def _variables(value: Callable[[Path], str]) -> Callable[[Path], Overlay]:
    return lambda d: {"dataset": {"variables": [value(d)]}}


def _external_store(d: Path) -> Overlay:
    """A forecast store of the workflow tests' built-in grid with z500 in feet."""
    import pandas as pd

    from hpcpipe.generate.dataset import latitudes, longitudes

    lat, lon, td = latitudes(16), longitudes(32), pd.to_timedelta([1, 2, 3], unit="D")
    dims = ("time", "prediction_timedelta", "latitude", "longitude")
    zeros = np.zeros((2, 3, 16, 32), np.float32)
    ds = xr.Dataset(
        {"t2m": (dims, zeros, {"units": "K"}), "z500": (dims, zeros, {"units": "ft"})},
        coords={"time": pd.date_range("2001-03-01", periods=2), "prediction_timedelta": td,
                "latitude": lat, "longitude": lon},
    )  # fmt: skip
    ds.to_zarr(d / "other.zarr", zarr_format=2, consolidated=True)
    return {"evaluate": {"external": {"other": str(d / "other.zarr")}}}


SPLIT_OUTSIDE = {"test": ["2001-03-01", "2003-12-31"]}

CONFIG_CASES: list[Case] = [
    # wrong types
    config_case("batch_size_is_a_string", {"train": {"batch_size": "64"}},
                "train.batch_size", "'64' is not of type 'integer'"),
    config_case("deterministic_is_a_string", {"train": {"deterministic": "yes"}},
                "train.deterministic", "not of type 'boolean'"),
    config_case("grid_size_is_a_float", {"dataset": {"builtin": {"n_lat": 16.5}}},
                "dataset.builtin.n_lat", "not of type 'integer'"),
    config_case("title_is_a_number", {"report": {"title": 5}},
                "report.title", "not of type 'string'"),
    config_case("lead_is_a_string", {"features": {"leads": ["1d"]}},
                "features.leads[0]", "not of type 'integer'"),
    # unknown keys and names
    config_case("unknown_top_level_key", {"trian": {"epochs": 3}},
                "'trian' was unexpected", "check the spelling"),
    config_case("unknown_nested_key", {"train": {"epoch": 3}},
                "train:", "'epoch' was unexpected"),
    config_case("misspelled_model", {"train": {"models": ["cnn", "unett"]}},
                "train.models[1]", "'unett' is not one of"),
    config_case("unknown_source", {"dataset": {"source": "netcdf"}},
                "dataset.source", "'netcdf' is not one of"),
    config_case("unknown_climatology", {"preprocess": {"climatology": "weekly"}},
                "preprocess.climatology", "'weekly' is not one of"),
    config_case("variable_not_in_builtin_data", {"dataset": {"variables": ["sst"]}},
                "dataset.variables", "['sst'] not in the built-in dataset"),
    # negative or impossible sizes
    config_case("epochs_negative", {"train": {"epochs": -1}},
                "train.epochs", "-1 is less than the minimum of 1"),
    config_case("batch_size_zero", {"train": {"batch_size": 0}},
                "train.batch_size", "0 is less than the minimum of 1"),
    config_case("n_days_negative", {"dataset": {"builtin": {"n_days": -5}}},
                "dataset.builtin.n_days", "-5 is less than the minimum"),
    config_case("negative_lag", {"features": {"lags": [-1, 0]}},
                "features.lags[0]", "-1 is less than the minimum of 0"),
    config_case("learning_rate_zero", {"train": {"lr": 0}},
                "train.lr", "less than or equal to the minimum of 0"),
    config_case("coarsen_zero", {"preprocess": {"coarsen": 0}},
                "preprocess.coarsen", "0 is less than the minimum of 1"),
    config_case("quantile_above_one", {"evaluate": {"extreme_quantile": 1.5}},
                "evaluate.extreme_quantile", "1.5 is greater than or equal to the maximum"),
    config_case("even_kernel_size", {"models": {"cnn": {"kernel_size": 4}}},
                "models.cnn.kernel_size", "4 is not one of"),
    config_case("unet_too_deep_for_the_grid", {"models": {"unet": {"depth": 5}}},
                "models.unet.depth", "divisible by 2**5=32", "dataset.builtin.n_lat x n_lon"),
    # impossible splits, leads longer than the data
    config_case("splits_overlap", {"preprocess": {"split": {"val": ["2000-12-01", "2001-02-28"]}}},
                "preprocess.split", "periods train and val overlap"),
    config_case("split_outside_the_data", {"preprocess": {"split": SPLIT_OUTSIDE}},
                "preprocess.split.test", "outside the built-in data"),
    config_case("split_ends_before_it_starts",
                {"preprocess": {"split": {"val": ["2001-02-28", "2001-01-01"]}}},
                "preprocess.split.val", "end 2001-01-01 is before start 2001-02-28"),
    config_case("split_date_does_not_exist",
                {"preprocess": {"split": {"val": ["2001-01-01", "2001-02-30"]}}},
                "preprocess.split.val[1]", "'2001-02-30' is not a valid date"),
    config_case("split_period_one_date", {"preprocess": {"split": {"train": ["2000-01-01"]}}},
                "preprocess.split.train", "is too short"),
    config_case("lead_longer_than_the_data", {"features": {"leads": [1, 400]}},
                "preprocess.split.train", "too few for features.lags", "features.leads [1, 400]"),
    config_case("external_named_like_a_baseline",
                {"evaluate": {"external": {"persistence": "/data/other.zarr"}}},
                "evaluate.external", "'persistence' should not be valid"),
    Case("external_store_in_other_units", lambda d: _external_store(d),
         ("evaluate.external.other", "other.zarr", "'z500' is in 'ft', the observations in 'm'")),
    config_case("headline_lead_not_a_lead", {"evaluate": {"headline_lead": 5}},
                "evaluate.headline_lead", "5 is not one of features.leads"),
    config_case("start_date_does_not_exist", {"dataset": {"builtin": {"start": "2000-13-01"}}},
                "dataset.builtin.start", "is not a 'date'"),
    # paths that do not exist
    config_case("ingest_path_does_not_exist",
                {"dataset": {"source": "file"}, "ingest": {"path": "/nonexistent/era5.nc"}},
                "ingest.path", "'/nonexistent/era5.nc' does not exist"),
    config_case("ingest_path_missing", {"dataset": {"source": "file"}},
                "ingest.path", "required when dataset.source is 'file'"),
    config_case("one_of_several_paths_does_not_exist",
                lambda d: {"dataset": {"source": "file"},
                           "ingest": {"path": [str(d), str(d / "era5_2001.nc")]}},
                "ingest.path[1]", "era5_2001.nc' does not exist"),
    config_case("ingest_path_empty", {"dataset": {"source": "file"}, "ingest": {"path": ""}},
                "ingest.path", "'' is not allowed"),
    # values with shell metacharacters (names end up in paths and command lines)
    config_case("variable_with_semicolon", _variables(_shell("t2m; touch {pwned}")),
                "dataset.variables[0]", "is not allowed", "only letters, digits and _"),
    config_case("variable_with_command_substitution", _variables(_shell("$(touch {pwned})")),
                "dataset.variables[0]", "is not allowed"),
    config_case("variable_with_backticks", _variables(_shell("`touch {pwned}`")),
                "dataset.variables[0]", "is not allowed"),
    config_case("variable_with_newline", _variables(lambda d: "z500\n"),
                "dataset.variables[0]", "'z500\\n' is not allowed"),
    config_case("model_with_semicolon", lambda d: {"train": {"models": [f"cnn; touch {d}/pwned"]}},
                "train.models[0]", "is not one of ['cnn', 'unet']"),
    config_case("model_section_with_command_substitution",
                lambda d: {"models": {f"$(touch {d}/pwned)": {"channels": 4}}},
                "models:", "was unexpected"),
    config_case("rename_value_with_backticks",
                lambda d: {"ingest": {"rename": {"t2m": f"`touch {d}/pwned`"}}},
                "ingest.rename.t2m", "is not allowed", "no spaces or shell characters"),
    config_case("rename_key_with_pipe", {"ingest": {"rename": {"t2m|sh": "t2m"}}},
                "ingest.rename", "'t2m|sh' is not allowed"),
    # non-finite numbers (every schema comparison with NaN is false)
    config_case("learning_rate_nan", "train:\n  lr: .nan\n",
                "train.lr: nan is not a finite number"),
    config_case("learning_rate_inf", "train:\n  lr: .inf\n",
                "train.lr: inf is not a finite number"),
    config_case("quantile_nan", "evaluate:\n  extreme_quantile: .nan\n",
                "evaluate.extreme_quantile: nan is not a finite number"),
    # keys given twice (YAML keeps the last silently)
    config_case("duplicate_top_level_key", "train:\n  epochs: 2\ntrain:\n  lr: 0.01\n",
                "{dir}/overlay.yaml, line 3: key 'train' is given twice (first on line 1)"),
    config_case("duplicate_nested_key", "train:\n  epochs: 2\n  epochs: 3\n",
                "{dir}/overlay.yaml, line 3: key 'epochs' is given twice"),
    # the built-in data's calendar
    config_case("n_days_past_2262", {"dataset": {"builtin": {"n_days": 100000}}},
                "dataset.builtin.n_days: 100000 days from 2000-01-01 end after 2262-04-11"),
    config_case("n_days_past_year_9999", {"dataset": {"builtin": {"n_days": 10000000}}},
                "dataset.builtin.n_days: 10000000 days", "end after 2262-04-11"),
    config_case("climatology_does_not_fit_daily_data",
                {"preprocess": {"climatology": "hour_dayofyear"}},
                "preprocess.climatology: 'hour_dayofyear' does not fit the built-in data",
                "which are daily"),
    # sizes: messages stay short, values stay bounded
    config_case("title_of_a_megabyte", {"report": {"title": "x" * 1_000_000}},
                "report.title", "is too long"),
    config_case("variable_name_too_long", {"dataset": {"variables": ["v" * 100]}},
                "dataset.variables[0]", "is too long"),
]  # fmt: skip


# --- broken datasets ----------------------------------------------------------------------
# Files are built from testdata.make_raw (548 daily steps from 2000-01-01, 8 x 16 grid).


def file_overlay(path: Path | list[Path], **extra: dict) -> dict[str, Any]:
    """The overlay that points the pipeline at ``path`` with a split that fits make_raw."""
    value: str | list[str] = [str(p) for p in path] if isinstance(path, list) else str(path)
    overlay: dict[str, Any] = {
        "dataset": {"source": "file"},
        "ingest": {"path": value},
        "preprocess": {"split": {k: list(v) for k, v in SPLIT.items()}},
    }
    for key, section in extra.items():
        overlay.setdefault(key, {}).update(section)
    return overlay


def netcdf_case(id: str, broken: Callable[[xr.Dataset], xr.Dataset], *expect: str) -> Case:
    def make(d: Path) -> dict[str, Any]:
        broken(make_raw()).to_netcdf(d / "data.nc")
        return file_overlay(d / "data.nc")

    return Case(id, make, ("{dir}/data.nc", *expect))


def _single_file(write: Callable[[Path], None], name: str = "data.nc", **extra: dict):
    def make(d: Path) -> dict[str, Any]:
        write(d / name)
        return file_overlay(d / name, **extra)

    return make


def _truncated(path: Path) -> None:
    make_raw().to_netcdf(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])


def _undecodable_time(path: Path) -> None:
    ds = make_raw()
    ds["time"] = ("time", np.arange(ds.sizes["time"]), {"units": "days since the start"})
    ds.to_netcdf(path)


def _irregular_times(path: Path) -> None:
    ds = make_raw()
    time = ds.indexes["time"].to_numpy().copy()
    time[300:] += np.timedelta64(12, "h")  # half a day out from then on
    ds.assign_coords(time=time).to_netcdf(path)


def _integer_times(path: Path) -> None:
    ds = make_raw()
    ds.assign_coords(time=np.arange(ds.sizes["time"])).to_netcdf(path)


def _grouped(path: Path) -> None:
    xr.Dataset(attrs={"title": "root"}).to_netcdf(path)
    make_raw().to_netcdf(path, group="era5", mode="a")


def _levels(path: Path) -> None:
    ds = make_raw()
    ds.assign(z500=ds.z500.expand_dims(level=[500, 850], axis=1)).to_netcdf(path)


def _late_inf(path: Path) -> None:
    ds = make_raw()
    ds["z500"][366, 1, 1] = np.inf
    ds.to_netcdf(path)


def _monthly_dayofyear(d: Path) -> dict[str, Any]:
    ds = make_raw().resample(time="MS").mean()
    ds.to_netcdf(d / "monthly.nc")
    split = {"train": ["2000-01-01", "2000-12-31"], "val": ["2001-01-01", "2001-03-31"],
             "test": ["2001-04-01", "2001-06-30"]}  # fmt: skip
    overlay = file_overlay(d / "monthly.nc", features={"leads": [1], "lags": [0]},
                           preprocess={"climatology": "dayofyear"})  # fmt: skip
    overlay["preprocess"]["split"] = split
    return overlay


def _month_gap(d: Path) -> dict[str, Any]:
    ds = make_raw().resample(time="MS").mean()
    ds.isel(time=[*range(10), *range(12, ds.sizes["time"])]).to_netcdf(d / "monthly.nc")
    overlay = file_overlay(d / "monthly.nc", features={"leads": [1], "lags": [0]})
    overlay["preprocess"]["split"] = {"train": ["2000-01-01", "2000-12-31"],
                                      "val": ["2001-01-01", "2001-03-31"],
                                      "test": ["2001-04-01", "2001-06-30"]}  # fmt: skip
    return overlay


def _zarr(path: Path) -> None:
    make_raw().chunk(time=100).to_zarr(path, zarr_format=2)


def _corrupt_chunk(path: Path) -> None:
    # A chunk past the first time steps: the check before the run reads only those, so
    # this is found while the ingest job reads the data.
    _zarr(path)
    sorted((path / "z500").glob("[0-9]*"))[2].write_bytes(b"\x00garbage" * 7)


def _corrupt_metadata(path: Path) -> None:
    _zarr(path)
    (path / ".zmetadata").write_text("{not json")
    (path / "z500" / ".zarray").write_text("{not json")


def _mixed_calendars(d: Path) -> dict[str, Any]:
    # Yearly files, the second from a model run in a 365-day calendar.
    make_raw().isel(time=slice(0, 366)).to_netcdf(d / "y2000.nc")
    make_raw(calendar="noleap").isel(time=slice(365, 548)).to_netcdf(d / "y2001.nc")
    return file_overlay([d / "y2000.nc", d / "y2001.nc"])


def _overlapping_files(d: Path) -> dict[str, Any]:
    make_raw().isel(time=slice(0, 400)).to_netcdf(d / "part1.nc")
    make_raw().isel(time=slice(380, 548)).to_netcdf(d / "part2.nc")
    return file_overlay([d / "part1.nc", d / "part2.nc"])


def _different_grids(d: Path) -> dict[str, Any]:
    make_raw().isel(time=slice(0, 366)).to_netcdf(d / "y2000.nc")
    make_raw(n_lat=16).isel(time=slice(366, 548)).to_netcdf(d / "y2001.nc")
    return file_overlay([d / "y2000.nc", d / "y2001.nc"])


ONE_YEAR_SPLIT = {
    "train": ["2000-01-01", "2000-08-31"],
    "val": ["2000-09-01", "2000-10-31"],
    "test": ["2000-11-01", "2000-12-31"],
}


def _one_year_long_leads(d: Path) -> dict[str, Any]:
    make_raw(n_days=366).to_netcdf(d / "year.nc")
    overlay = file_overlay(d / "year.nc", features={"leads": [1, 400]})
    overlay["preprocess"]["split"] = ONE_YEAR_SPLIT
    return overlay


DATASET_CASES: list[Case] = [
    netcdf_case("missing_variable", lambda ds: ds.drop_vars("z500"),
                "variable(s) ['z500'] not found", "dataset.variables"),
    netcdf_case("wrong_dimension_names", lambda ds: ds.rename(lat="y", lon="x"),
                "no dimension 'lat'", "ingest.rename.lat"),
    netcdf_case("nan_only_field", lambda ds: ds.assign(z500=ds.z500 * np.nan),
                "variable 'z500' is all NaN"),
    netcdf_case("single_time_step", lambda ds: ds.isel(time=slice(0, 1)),
                "only 1 time step"),
    netcdf_case("duplicated_times", lambda ds: ds.isel(time=[0, 1, 1, *range(2, 548)]),
                "duplicated time 2000-01-02"),
    netcdf_case("gap_in_times", lambda ds: ds.isel(time=[*range(200), *range(210, 548)]),
                "a gap in time after 2000-07-18", "10 step(s) are missing",
                "the first at 2000-07-19"),
    Case("irregular_times", _single_file(_irregular_times),
         ("{dir}/data.nc", "the time step is irregular")),
    Case("integer_times_without_units", _single_file(_integer_times),
         ("{dir}/data.nc: time variable 'time' holds int64 values, not dates",
          "give it CF units")),
    netcdf_case("infinite_values_in_the_first_steps",
                lambda ds: ds.assign(z500=ds.z500.where(ds.time > ds.time[2], np.inf)),
                "variable 'z500' holds infinite values"),
    netcdf_case("longitudes_spanning_more_than_360",
                lambda ds: ds.assign_coords(lon=ds.lon * 1.5),
                "longitudes span 0..506.25, more than 360 degrees"),
    netcdf_case("test_period_past_the_file",
                lambda ds: ds.isel(time=slice(0, 500)),
                "preprocess.split.test (2001-04-01..2001-06-30) runs past the data"),
    Case("climatology_does_not_fit_monthly_data", _monthly_dayofyear,
         ("{dir}/monthly.nc", "preprocess.climatology: 'dayofyear' does not fit",
          "which are monthly")),
    Case("unet_too_deep_for_the_file_grid",
         _single_file(lambda p: make_raw().to_netcdf(p), models={"unet": {"depth": 4}}),
         ("models.unet.depth: 4 needs a grid divisible by 2**4=16", "{dir}/data.nc",
          "preprocess.coarsen")),
    Case("swept_unet_depth_too_deep_for_the_file_grid",
         _single_file(lambda p: make_raw().to_netcdf(p), models={"unet": {"depth": 1}},
                      sweep={"parameters": {"models.unet.depth": [1, 4]}}),
         ("models.unet.depth: 4 needs a grid divisible by 2**4=16", "{dir}/data.nc")),
    Case("variables_in_a_netcdf4_group", _single_file(_grouped),
         ("{dir}/data.nc: its variables are in NetCDF4/Zarr groups ['era5']",
          "ingest.group")),
    Case("gap_in_monthly_times", _month_gap,
         ("{dir}/monthly.nc: a gap in time after 2000-10-01", "2 step(s) are missing",
          "the first in 2000-11")),
    Case("group_not_in_the_file", _single_file(_grouped, ingest={"group": "era6"}),
         ("{dir}/data.nc: has no group 'era6' (ingest.group); its groups: ['era5']",)),
    Case("select_on_a_dimension_not_in_the_file",
         _single_file(_levels, ingest={"select": {"plev": 500}}),
         ("{dir}/data.nc: ingest.select.plev: the file has no dimension 'plev'",)),
    Case("level_not_in_the_file",
         _single_file(_levels, ingest={"select": {"level": 300}}),
         ("{dir}/data.nc: ingest.select.level: 300 is not one of its values [500, 850]",)),
    Case("infinite_values_later_in_the_file", _single_file(_late_inf),
         ("{dir}/data.nc: variable 'z500' holds infinite values (first at time 2001-01-01",),
         before_jobs=False),
    netcdf_case("extra_level_dimension",
                lambda ds: ds.assign(z500=ds.z500.expand_dims(level=[500, 850], axis=1)),
                "variable 'z500' has extra dimension 'level'",
                "pick one with ingest.select: {level: <value>}"),
    netcdf_case("non_numeric_variable",
                lambda ds: ds.assign(z500=ds.z500.astype(str)),
                "variable 'z500' has non-numeric dtype"),
    netcdf_case("latitude_out_of_range", lambda ds: ds.assign_coords(lat=ds.lat * 2),
                "latitude must be 1-D degrees in [-90, 90]"),
    netcdf_case("split_outside_the_file",
                lambda ds: ds.isel(time=slice(0, 400)),
                "preprocess.split.test", "contains no time step"),
    Case("rename_to_a_name_not_in_the_file",
         lambda d: (make_raw().to_netcdf(d / "data.nc"),
                    file_overlay(d / "data.nc", ingest={"rename": {"t2m": "2t"}}))[1],
         ("{dir}/data.nc", "ingest.rename refers to ['2t']")),
    Case("lead_longer_than_the_file", _one_year_long_leads,
         ("{dir}/year.nc", "preprocess.split.train", "features.leads [1, 400]", "too few")),
    Case("mixed_calendars", _mixed_calendars,
         ("{dir}/y2001.nc: time is in the 'noleap' calendar",
          "{dir}/y2000.nc is in the 'standard' calendar")),
    Case("overlapping_yearly_files", _overlapping_files,
         ("{dir}/part1.nc (and 1 more files)", "duplicated time 2001-01-15")),
    Case("yearly_files_on_different_grids", _different_grids,
         ("{dir}/y2001.nc: its lat grid differs from that of {dir}/y2000.nc",)),
    Case("truncated_netcdf", _single_file(_truncated),
         ("{dir}/data.nc: cannot be read", "truncated")),
    Case("empty_file", _single_file(lambda p: p.write_bytes(b"")),
         ("{dir}/data.nc: the file is empty",)),
    Case("wrong_file_type", _single_file(lambda p: p.write_text("time,t2m\n2000-01-01,280\n")),
         ("{dir}/data.nc: not a NetCDF file",)),
    Case("undecodable_time_units", _single_file(_undecodable_time),
         ("{dir}/data.nc: cannot be read", "'days since the start'", "units and calendar")),
    Case("corrupt_zarr_metadata", _single_file(_corrupt_metadata, "data.zarr"),
         ("{dir}/data.zarr: cannot be read",)),
    Case("empty_directory_as_zarr", _single_file(lambda p: p.mkdir(), "data.zarr"),
         ("{dir}/data.zarr: cannot be read",)),
    Case("corrupt_zarr_chunk", _single_file(_corrupt_chunk, "data.zarr"),
         ("{dir}/data.zarr: reading the data failed", "corrupt chunk"), before_jobs=False),
]  # fmt: skip

# Deliberately accepted, not refused: the problem is repaired, with a warning naming the file.
ACCEPTED_CASES: list[Case] = [
    netcdf_case("unsorted_times", lambda ds: ds.isel(time=np.r_[5:548, 0:5]),
                "time is not sorted; sorting it"),
]  # fmt: skip

# Every case goes through `hpcpipe check-config` (in-process: the checks the Snakefile runs,
# nearly free); a third of them, and every case that only a job can find, also through
# `snakemake` (a 3-s start each) to show how the user meets the error there.
ALL_CASES = CONFIG_CASES + DATASET_CASES
SNAKEMAKE_CASES = [c for i, c in enumerate(ALL_CASES) if i % 3 == 0 or not c.before_jobs]
