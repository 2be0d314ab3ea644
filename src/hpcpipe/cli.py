"""`hpcpipe <step>`: one subcommand per pipeline step, called by the workflow's rules.

Rules pass explicit paths and the config section a step depends on as JSON (--params), so
every step is also runnable by hand. Errors reach the user as one plain sentence (exit 1);
the full traceback goes to the step's log file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcpipe import logs

log = logging.getLogger("hpcpipe")
# ValueError covers ConfigError, DatasetError and the steps' own checks; the rest are the
# store, checkpoint and Dask errors, whose messages name the path or mode.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


def _params(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def cmd_generate(a: argparse.Namespace) -> None:
    from hpcpipe.generate import generate_dataset
    from hpcpipe.ingest import check_serves

    p = a.params
    ds = generate_dataset(p["builtin"], p["variables"])
    if "split" in p:  # the workflow checks this from the config before it starts
        check_serves(ds, p["variables"], p["split"], p["lags"], p["leads"], "built-in dataset")
    # Store with the generator's own chunks (whole generation blocks): no rechunk on write.
    _write(ds, a.output, {"time": ds.chunks["time"][0]})


def cmd_ingest(a: argparse.Namespace) -> None:
    from hpcpipe.chunking import raw_chunks
    from hpcpipe.ingest import DatasetError, ingest

    ds = ingest(a.input if len(a.input) > 1 else a.input[0], a.params)
    try:
        _write(ds, a.output, raw_chunks(ds))
    except Exception as exc:
        # The data are read only now, chunk by chunk: name the file that failed to read.
        raise DatasetError(
            f"{', '.join(a.input)}: reading the data failed ({type(exc).__name__}: {exc}); "
            "a corrupt chunk or a truncated file?"
        ) from exc


def _write(ds: Any, path: str, chunks: dict[str, int]) -> None:
    from hpcpipe.store import write_store

    log.info("writing %s (%s, %.1f MB)", path, dict(ds.sizes), ds.nbytes / 1e6)
    write_store(ds, path, chunks)


def cmd_preprocess(a: argparse.Namespace) -> None:
    from hpcpipe.atomic import write_json
    from hpcpipe.chunking import preprocessed_chunks
    from hpcpipe.preprocess import preprocess
    from hpcpipe.store import open_store

    out, stats = preprocess(open_store(a.input, "raw data"), a.params)
    _write(out, a.output, preprocessed_chunks(out))
    write_json(a.stats, stats)


def cmd_thresholds(a: argparse.Namespace) -> None:
    from hpcpipe.chunking import threshold_chunks
    from hpcpipe.preprocess import thresholds
    from hpcpipe.store import open_store

    out = thresholds(open_store(a.input, "preprocessed data"), a.params)
    _write(out, a.output, threshold_chunks(out))


def cmd_features(a: argparse.Namespace) -> None:
    from hpcpipe.chunking import feature_chunks
    from hpcpipe.features import split_features
    from hpcpipe.store import open_store

    pre = open_store(a.input, "preprocessed data")
    for split, path in (("train", a.train), ("val", a.val), ("test", a.test)):
        ds = split_features(pre, split, a.params)
        _write(ds, path, feature_chunks(ds))


def cmd_train(a: argparse.Namespace) -> None:
    from hpcpipe.train import train

    p = a.params
    summary = train(
        a.model, p["model"], p["train"], a.seed, a.features, a.output, a.history,
        threads=a.threads, checkpoint_dir=a.checkpoints,
    )  # fmt: skip
    log.info("training done: %s", summary)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from hpcpipe.evaluate import evaluate

    evaluate(
        a.model, a.features, a.preprocessed, a.thresholds, a.output_dir, a.params, threads=a.threads
    )


def cmd_summary(a: argparse.Namespace) -> None:
    from hpcpipe.evaluate import summarize

    summarize([Path(p) for p in a.metrics], Path(a.output_csv), Path(a.output_png), title=a.title)
    if a.provenance:
        from hpcpipe.atomic import write_text
        from hpcpipe.provenance import describe

        write_text(a.provenance, "\n\n".join(describe(p) for p in a.metrics) + "\n")


def step_io(a: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The inputs and outputs of a step, for its provenance manifests."""
    c = a.command
    if c == "generate":
        return [], [a.output]
    if c == "ingest":
        return list(a.input), [a.output]
    if c == "preprocess":
        return [a.input], [a.output, a.stats]
    if c in ("thresholds",):
        return [a.input], [a.output]
    if c == "features":
        return [a.input], [a.train, a.val, a.test]
    if c == "train":
        feats = Path(a.features)
        return [str(feats / "train.zarr"), str(feats / "val.zarr")], [a.output, a.history]
    if c == "evaluate":
        outs = [
            str(Path(a.output_dir) / n)
            for n in (
                "metrics.json",
                "metrics.csv",
                "skill_vs_lead.png",
                "error_maps.png",
                "loss_curve.png",
            )
        ]
        return [a.model, a.features, a.preprocessed, a.thresholds], outs
    if c == "summary":
        outs = [a.output_csv, a.output_png] + ([a.provenance] if a.provenance else [])
        return list(a.metrics), outs
    return [], []


def cmd_provenance(a: argparse.Namespace) -> None:
    from hpcpipe.provenance import ProvenanceError, check, describe

    print(describe(a.output))
    if a.check:
        problems = check(a.output)
        if problems:
            raise ProvenanceError(f"{len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        print(f"{a.output}: every output in the chain matches its manifest")


def cmd_check_config(a: argparse.Namespace) -> None:
    from hpcpipe.config import load

    config = load(a.config, *a.overlays)
    names = " + ".join([a.config, *a.overlays])
    if config["dataset"]["source"] == "file":
        # The same check the workflow makes before it starts: can the data serve the config?
        from hpcpipe.ingest import check_config_against_file

        counts = check_config_against_file(config)
        print(f"{names}: valid; samples per split {counts}")
        return
    print(f"{names}: valid")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpipe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")

    def step(
        name: str, func: Callable[[argparse.Namespace], None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        p.add_argument("--log", help="log file (the rule's log:)")
        p.add_argument(
            "--threads",
            type=int,
            default=None,
            help="CPUs granted (ignored inside SLURM, which says)",
        )
        p.add_argument(
            "--params", type=_params, default={}, help="the step's config section, as JSON"
        )
        p.add_argument(
            "--dask",
            type=_params,
            default=None,
            help="the config's runtime section `dask` as JSON (mode, address, jobqueue, ...); "
            "default: $HPCPIPE_DASK, which the workflow sets; HPCPIPE_DASK_MODE and the other "
            "HPCPIPE_DASK_* variables override single keys",
        )
        return p

    p = step("generate", cmd_generate, "generate the built-in dataset")
    p.add_argument("--output", required=True)
    p = step("ingest", cmd_ingest, "ingest a CF NetCDF/Zarr dataset")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        help="a NetCDF file or Zarr store, or several in time order",
    )
    p.add_argument("--output", required=True)
    p = step("preprocess", cmd_preprocess, "climatology, anomalies, normalisation, split")
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--stats", required=True)
    p = step(
        "thresholds", cmd_thresholds, "per-grid-point extreme thresholds of the training period"
    )
    p.add_argument("--input", required=True)
    p.add_argument("--output", required=True)
    p = step("features", cmd_features, "lagged inputs, derived fields and targets per split")
    p.add_argument("--input", required=True)
    for split in ("train", "val", "test"):
        p.add_argument(f"--{split}", required=True, help=f"output store of the {split} split")
    p = step("train", cmd_train, "train one model with one seed")
    p.add_argument("--features", required=True, help="directory with train.zarr and val.zarr")
    p.add_argument("--model", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--output", required=True, help="model.pt")
    p.add_argument("--history", required=True, help="per-epoch metrics CSV")
    p.add_argument(
        "--checkpoints",
        help="checkpoint directory (outside the outputs): resume from it, checkpoint into it",
    )
    p = step("evaluate", cmd_evaluate, "skill of one trained model against the baselines")
    p.add_argument("--model", required=True)
    p.add_argument("--features", required=True, help="the test split's feature store")
    p.add_argument("--preprocessed", required=True)
    p.add_argument("--thresholds", required=True)
    p.add_argument("--output-dir", required=True)
    p = step("summary", cmd_summary, "one table and chart across models and seeds")
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--output-csv", required=True)
    p.add_argument("--output-png", required=True)
    p.add_argument("--title", default="hpcpipe forecast skill")
    p.add_argument("--provenance", help="write the provenance chain of every evaluated model here")
    sub.add_parser(
        "launch", help="start N local ranks of a command, like srun -n N (launch -n N CMD...)"
    )
    p = sub.add_parser(
        "provenance", help="where an output came from (run in the workflow directory)"
    )
    p.add_argument("output")
    p.add_argument("--check", action="store_true", help="verify every checksum along the chain")
    p.set_defaults(func=cmd_provenance, log=None, threads=None)
    p = sub.add_parser(
        "check-config",
        help="validate a config file (and overlays, later ones win) and the dataset it names",
    )
    p.add_argument("config")
    p.add_argument("overlays", nargs="*", help="overlays, as in snakemake --configfile A B")
    p.set_defaults(func=cmd_check_config, log=None, threads=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # a process launcher, not a step: no logging or Dask set-up
        from hpcpipe.runtime.launch import main as launch_main

        return launch_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.func in (cmd_provenance, cmd_check_config):  # queries, not steps
        logs.setup(None)
        try:
            args.func(args)
        except ValueError as exc:
            print(f"hpcpipe {args.command}: {exc}", file=sys.stderr)
            return 1
        return 0
    logs.setup(args.log)
    from hpcpipe.checkpoint import TrainingStopped
    from hpcpipe.dask_cluster import DaskSettings, dask_runtime, serve_allocation_worker
    from hpcpipe.runtime.allocation import allocation
    from hpcpipe.runtime.environment import launcher_rank

    start = time.monotonic()
    try:
        alloc = allocation(args.threads)
        settings = DaskSettings.from_config(_dask_section(args.dask))
        if serve_allocation_worker(settings, alloc):
            # A worker rank of a multi-task step: rank 0 runs the step and writes its outputs.
            log.info("hpcpipe %s: worker rank done", args.command)
            return 0
        log.info(
            "hpcpipe %s: %d CPUs, %.1f GB, %d GPUs%s",
            args.command, alloc.cpus, alloc.memory_gb, alloc.gpus, _where(),
        )  # fmt: skip
        started = datetime.datetime.now(datetime.UTC)
        inputs, outputs = step_io(args)
        if launcher_rank() != 0:  # only rank 0 of a multi-rank step writes outputs and manifests
            outputs = []
        _remove_leftovers(outputs)
        with dask_runtime(alloc, settings):
            args.func(args)
        if outputs:
            from hpcpipe.provenance import write_manifests
            from hpcpipe.store import CHECKSUM_SECONDS

            t0 = time.monotonic() - CHECKSUM_SECONDS[0]  # chunk checksums count as manifest cost
            resources = {
                "cpus": alloc.cpus,
                "memory_gb": round(alloc.memory_gb, 2),
                "gpus": alloc.gpus,
            }
            write_manifests(args.command, args.params, inputs, outputs, started, resources)
            took = time.monotonic() - t0
            log.info(
                "provenance: manifests and chunk checksums took %.3f s (%.2f%% of the step)",
                took,
                100 * took / max(time.monotonic() - start, 1e-9),
            )
    except TrainingStopped as exc:
        # Not a failure of the step but not done either: Snakemake must see it unfinished.
        log.warning("%s", exc)
        print(f"hpcpipe {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except Exception as exc:
        # Errors the steps raise on purpose name the file/key/variable: no traceback needed.
        logs.failure(
            args.command, exc, expected=isinstance(exc, EXPECTED_ERRORS) and not _want_traceback()
        )
        return 1
    log.info("hpcpipe %s finished in %.1f s", args.command, time.monotonic() - start)
    return 0


def _remove_leftovers(outputs: list[str]) -> None:
    from hpcpipe.atomic import remove_leftovers

    for out in outputs:
        for p in remove_leftovers(out):
            log.info("removed %s, a partial output left by a killed run", p)


def _dask_section(given: dict[str, Any] | None) -> dict[str, Any]:
    """The dask section: --dask, else $HPCPIPE_DASK (set by the workflow from the config)."""
    import os

    if given is not None:
        return given
    text = os.environ.get("HPCPIPE_DASK", "").strip()
    return _params(text) if text else {}


def _where() -> str:
    import os

    from hpcpipe.runtime.environment import slurm_job

    job = slurm_job()
    if job is None:
        return " (local)"
    part = job.get("job_partition", "?")
    # A requeued job runs again under the same id: say which run this is.
    again = f", restart {job['restart_count']}" if job.get("restart_count", "0") != "0" else ""
    return f" (SLURM job {job['job_id']}{again}, partition {part}, node {os.uname().nodename})"


def _want_traceback() -> bool:
    import os

    return os.environ.get("HPCPIPE_TRACEBACK", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
