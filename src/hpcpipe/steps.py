"""The pipeline's steps as one table: each subcommand, its inputs, outputs and options.

Rules call `hpcpipe <step>` with every input and output named explicitly, so a step's
provenance (which files it read, which it wrote) is read off its arguments, declared here
once; the parser (:mod:`hpcpipe.cli`) and the manifests (:mod:`hpcpipe.runner`) both use it.
The step functions only wire: all logic is in the modules they call, imported inside them so
that a step loads only what it needs (array steps never import torch).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from hpcpipe.optimize.commands import optimize_steps
from hpcpipe.step_spec import Arg, Step, metrics_paths

log = logging.getLogger("hpcpipe")


def _write(ds: Any, path: str, chunks: dict[str, int]) -> None:
    from hpcpipe.store import write_store

    log.info("writing %s (%s, %.1f MB)", path, dict(ds.sizes), ds.nbytes / 1e6)
    write_store(ds, path, chunks)


def run_generate(ns: argparse.Namespace) -> None:
    from hpcpipe.generate.dataset import generate_dataset
    from hpcpipe.ingest import check_serves

    p = ns.params
    ds = generate_dataset(p["builtin"], p["variables"])
    if "split" in p:  # the workflow checks this from the config before it starts
        check_serves(ds, p["variables"], p["split"], p["lags"], p["leads"], "built-in dataset")
    # Store with the generator's own chunks (whole generation blocks): no rechunk on write.
    _write(ds, ns.output, {"time": ds.chunks["time"][0]})


def run_ingest(ns: argparse.Namespace) -> None:
    from hpcpipe.chunking import raw_chunks
    from hpcpipe.config import as_json
    from hpcpipe.fingerprint import records
    from hpcpipe.ingest import DatasetError, ingest
    from hpcpipe.ingest_checks import with_step_summary

    ds = ingest(ns.input if len(ns.input) > 1 else ns.input[0], ns.params)
    # What the workflow checks a training period against before any job, and the params
    # that tell it whether this store is current.
    ds = with_step_summary(ds, ns.params["variables"])
    ds.attrs["params"] = as_json(ns.params)
    # What the next plan compares the inputs against (hpcpipe.fingerprint)
    ds.attrs["inputs"] = records(ns.input, ns.params.get("inputs", {}))
    try:
        _write(ds, ns.output, raw_chunks(ds))
    except DatasetError:  # found while reading (infinite values): named already
        raise
    except Exception as exc:
        # The data are read only now, chunk by chunk: name the file that failed to read.
        raise DatasetError(
            f"{', '.join(ns.input)}: reading the data failed ({type(exc).__name__}: {exc}); "
            "a corrupt chunk or a truncated file?"
        ) from exc


def run_check_raw(ns: argparse.Namespace) -> None:
    from hpcpipe.atomic import write_json
    from hpcpipe.contracts import DatasetError
    from hpcpipe.ingest_checks import raw_problems
    from hpcpipe.store import open_store

    p = ns.params
    if problems := raw_problems(open_store(ns.input, "raw data"), p["split"], p["variables"],
                                ns.input):  # fmt: skip
        raise DatasetError("; ".join(problems))
    log.info("%s: every variable varies over the training period", ns.input)
    write_json(ns.output, {"checked": p})


def run_preprocess(ns: argparse.Namespace) -> None:
    from hpcpipe.atomic import write_json
    from hpcpipe.chunking import preprocessed_chunks
    from hpcpipe.preprocess import preprocess
    from hpcpipe.store import open_store

    out, stats = preprocess(open_store(ns.input, "raw data"), ns.params)
    _write(out, ns.output, preprocessed_chunks(out))
    write_json(ns.stats, stats)


def run_thresholds(ns: argparse.Namespace) -> None:
    from hpcpipe.chunking import threshold_chunks
    from hpcpipe.store import open_store
    from hpcpipe.thresholds import thresholds

    out = thresholds(open_store(ns.input, "preprocessed data"), ns.params)
    _write(out, ns.output, threshold_chunks(out))


def run_features(ns: argparse.Namespace) -> None:
    from hpcpipe.chunking import feature_chunks
    from hpcpipe.features import SPLITS, split_features
    from hpcpipe.store import open_store

    pre = open_store(ns.input, "preprocessed data")
    for split in SPLITS:
        ds = split_features(pre, split, ns.params)
        _write(ds, getattr(ns, split), feature_chunks(ds))


def run_train(ns: argparse.Namespace) -> None:
    from hpcpipe.train.data import FeatureStores
    from hpcpipe.train.trainer import train

    p, stores = ns.params, FeatureStores(Path(ns.train), Path(ns.val))
    summary = train(
        ns.model, p["model"], p["train"], ns.seed, stores, ns.output, ns.history,
        threads=ns.threads, checkpoint_dir=ns.checkpoints,
    )  # fmt: skip
    log.info("training done: %s", summary)


def run_predict(ns: argparse.Namespace) -> None:
    from hpcpipe.predict import predict_store

    predict_store(
        ns.model, ns.features, ns.preprocessed, ns.stats, ns.output, ns.params, ns.threads
    )


def run_evaluate(ns: argparse.Namespace) -> None:
    import json

    from hpcpipe.evaluate.step import OUTPUTS, evaluate

    outputs = {name: getattr(ns, name) for name in OUTPUTS}
    evaluate(
        ns.forecasts, ns.history, ns.features, ns.preprocessed, ns.thresholds, ns.stats, outputs,
        ns.params, external=json.loads(ns.external) if ns.external else {},
    )  # fmt: skip


def run_export(ns: argparse.Namespace) -> None:
    from hpcpipe.export import export

    export(ns.model, ns.features, ns.preprocessed, ns.stats, ns.output, ns.params)


def run_summary(ns: argparse.Namespace) -> None:
    from hpcpipe.evaluate.summary import summarize

    landing = Path(ns.landing) if ns.landing else None
    paths = metrics_paths(ns)
    summarize(paths, Path(ns.output_csv), Path(ns.output_png), ns.title, landing)
    if ns.provenance:
        from hpcpipe.atomic import write_text
        from hpcpipe.provenance import describe

        write_text(ns.provenance, "\n\n".join(describe(p) for p in paths) + "\n")


def run_leaderboard(ns: argparse.Namespace) -> None:
    import json

    from hpcpipe.evaluate.leaderboard import write
    from hpcpipe.sweep import runs_of_spec, swept_keys

    runs = runs_of_spec(ns.runs)
    keys = swept_keys(json.loads(ns.runs)["sweep"])
    write(runs, metrics_paths(ns), keys, Path(ns.output_csv), Path(ns.output_png),
          Path(ns.output_rst))  # fmt: skip


def run_usage_table(ns: argparse.Namespace) -> None:
    from hpcpipe.usage_report import rows, table, write_chart, write_csv

    data = rows(".")  # every step's manifest in the workflow directory
    if not data:  # steps made before usage was recorded
        log.warning("no step has recorded its usage here; the table is empty")
    log.info("usage of every step run:\n%s", table(data))
    write_csv(data, ns.output_csv)
    write_chart(data, ns.output_png)


def _in(flag: str, help: str = "", many: bool = False, required: bool = True) -> Arg:
    return Arg(flag, "input", help, many=many, required=required)


def _model_on_test(output: str) -> tuple[Arg, ...]:
    """predict's and export's arguments: a model, the test split it is applied to, the output."""
    return (_in("--model", "model.pt"), _in("--features", "the test split's feature store"),
            _in("--preprocessed"), _in("--stats", "stats.json (the variables' units)"),
            _out("--output", output))  # fmt: skip


def _run_pattern(required: bool) -> tuple[Arg, Arg]:
    """Every run's metrics.json as the runs' spec and a pattern, not 10,000 paths: a whole
    shell command is one argument of `bash -c`, at most 128 KB on Linux."""
    return (
        Arg("--runs", "option", "models, seeds and sweep (JSON; hpcpipe.sweep.spec)",
            required=required),
        Arg("--metrics-pattern", "option", "metrics.json of a run: {model}, {seed}, {point}",
            required=required),
    )  # fmt: skip


def _out(flag: str, help: str = "", required: bool = True) -> Arg:
    return Arg(flag, "output", help, required=required)


STEPS: tuple[Step, ...] = (
    Step("generate", "generate the built-in dataset", run_generate, (_out("--output"),)),
    Step(
        "ingest",
        "ingest a CF NetCDF/Zarr dataset",
        run_ingest,
        (
            _in("--input", "a NetCDF file or Zarr store, or several in time order", many=True),
            _out("--output"),
        ),
    ),
    Step(
        "check-raw",
        "refuse a variable all NaN or constant over the training period, before preprocess",
        run_check_raw,
        (_in("--input"), _out("--output", "a JSON record of what was checked")),
    ),
    Step(
        "preprocess",
        "climatology, anomalies, normalisation, split",
        run_preprocess,
        (
            _in("--input"),
            _out("--output"),
            _out("--stats"),
        ),
    ),
    Step(
        "thresholds",
        "per-grid-point extreme thresholds of the training period",
        run_thresholds,
        (_in("--input"), _out("--output")),
    ),
    Step(
        "features",
        "lagged inputs, derived fields and targets per split",
        run_features,
        (
            _in("--input"),
            *(_out(f"--{s}", f"output store of the {s} split") for s in ("train", "val", "test")),
        ),
    ),
    Step(
        "train",
        "train one model with one seed",
        run_train,
        (
            _in("--train", "the training split's feature store"),
            _in("--val", "the validation split's feature store"),
            Arg("--model", "option", "model name (train.models)"),
            Arg("--seed", "option", "seed (train.seeds)", type=int),
            _out("--output", "model.pt"),
            _out("--history", "per-epoch metrics CSV"),
            Arg(
                "--checkpoints",
                "option",
                "checkpoint directory (outside the outputs): resume from it, checkpoint into it",
                required=False,
            ),
        ),
    ),
    Step(
        "predict",
        "one trained model's test-period forecasts as a forecast store (WeatherBench 2 layout)",
        run_predict,
        _model_on_test("the forecast store (.zarr)"),
    ),
    Step(
        "evaluate",
        "skill of one run's stored forecasts against the baselines (and external forecasts)",
        run_evaluate,
        (
            _in("--forecasts", "the run's forecast store (predict)"),
            _in("--history", "the model's history.csv (its loss curve)"),
            _in("--features", "the test split's feature store"),
            _in("--preprocessed"),
            _in("--thresholds"),
            _in("--stats", "stats.json (the observations' units)"),
            # not an input: the manifest would checksum every chunk of a store of TBs
            Arg("--external", "option", "evaluate.external as JSON: {name: path}", required=False),
            _out("--metrics", "metrics.json"),
            _out("--table", "metrics.csv"),
            _out("--skill", "skill against lead time (PNG)"),
            _out("--maps", "error maps at the headline lead (PNG)"),
            _out("--loss", "loss curve (PNG)"),
        ),
    ),
    Step(
        "export",
        "a self-contained inference artifact of one model (torch.export .pt2 + JSON + predict.py)",
        run_export,
        _model_on_test("the artifact's directory"),
    ),
    Step(
        "summary",
        "one table and chart across models and seeds",
        run_summary,
        (
            _in("--metrics", "every run's metrics.json", many=True, required=False),
            *_run_pattern(required=False),
            _out("--output-csv"),
            _out("--output-png"),
            Arg("--title", "option", required=False, default="hpcpipe forecast skill"),
            _out(
                "--provenance",
                "write the provenance chain of every evaluated model here",
                required=False,
            ),
            _out(
                "--landing",
                "the report's landing page (reStructuredText): the headline table and the chart",
                required=False,
            ),
        ),
    ),
    Step(
        "leaderboard",
        "a sweep's runs ranked by validation loss: CSV, chart, report page",
        run_leaderboard,
        (
            *_run_pattern(required=True),
            _out("--output-csv"),
            _out("--output-png"),
            _out("--output-rst", "the report's sweep page (reStructuredText)"),
        ),
    ),
    Step(
        "usage-table",
        "what every step asked for and used: a table and a chart (hpcpipe usage prints it)",
        run_usage_table,
        (
            _in("--after", "an output of the last step (the summary table): run after it"),
            _out("--output-csv"),
            _out("--output-png"),
        ),
    ),
    *optimize_steps(),
)
BY_NAME = {step.name: step for step in STEPS}
