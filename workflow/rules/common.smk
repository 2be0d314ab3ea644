# Shared helpers: config validation, the params each step depends on, resource tiers.
import inspect
import os

from hpcpipe.config import as_json, validate
from hpcpipe.config_checks import check_duplicate_keys
from hpcpipe.fingerprint import tokens as input_tokens
from hpcpipe.optimize import PER_RUN
from hpcpipe.runtime.dask.settings import DaskClusterError, check_environment
from hpcpipe.sweep import SweepError, plan, repeated_draws, spec
from hpcpipe.timeaxis import climatology_for

# Validate (and fill defaults) before any job is planned; an error names every bad key.
try:
    # Snakemake's YAML keeps the last of a key given twice: refuse those files first.
    check_duplicate_keys(workflow.configfiles)
    validate(config, source="config (config/config.yaml and overrides)")
    check_environment(config.get("dask"), os.environ)  # HPCPIPE_DASK* of this shell
    if config["dataset"]["source"] == "file":
        # imported here: xarray takes a second, and Snakemake parses this file in every job
        from hpcpipe.ingest import check_config_against_file

        # preprocess.climatology with `auto` resolved: params hold the climatology used
        CLIMATOLOGY = check_config_against_file(config).climatology
    else:
        CLIMATOLOGY = climatology_for(config["preprocess"]["climatology"], "daily")
# ConfigError, DatasetError, the Dask settings
except (ValueError, DaskClusterError) as exc:
    raise WorkflowError(str(exc)) from None


# The Dask runtime of the array steps (the config's runtime section `dask`, see the schema)
# reaches them through the environment, which jobs inherit (SLURM jobs too), never through
# params: changing the mode or the cluster reruns nothing, the results do not depend on it.
# (Set here, never read: a SLURM job parses this file again and sets it from the same config.)
os.environ.update(HPCPIPE_DASK=as_json(config.get("dask", {})))

RAW = "data/raw.zarr"  # generated or ingested
MODELS = config["train"]["models"]
SEEDS = config["train"]["seeds"]
VARIABLES = config["dataset"]["variables"]

# The training fan-out, models x seeds x sweep points (hpcpipe.sweep): (model, run dir) ->
# (run, its train params), checked and made once here, so each job's params are a lookup.
try:
    RUNS = plan(config)
except SweepError as exc:
    raise WorkflowError(str(exc)) from None
if repeats := repeated_draws(config, RUNS):  # a random sweep drew a point twice
    logger.warning(repeats)
RUN_WILDCARDS = {
    "model": [r.model for r, _ in RUNS.values()],
    "seed": [r.seed for r, _ in RUNS.values()],
    "point": [f"-{r.point}" if r.point else "" for r, _ in RUNS.values()],
}


def run_outputs(pattern):
    """A per-run output pattern, for every run (summary inputs)."""
    return expand(pattern, zip, **RUN_WILDCARDS)


# Wildcards become paths and command-line arguments: a target asked for on the command line
# (snakemake 'results/eval/<anything>/0/metrics.json') must not smuggle in a path separator
# or shell characters. The config's own values pass the same rules in the schema.
wildcard_constraints:
    model=r"[A-Za-z_][A-Za-z0-9_]*",
    seed=r"[0-9]+",
    point=r"(-[0-9a-f]{10})?",  # empty outside a sweep: results/models/{model}/{seed}/


# Resource tiers (like nf-core labels): one place for sizes. Memory and runtime grow
# with each retry (attempt), so a job killed for lack of either gets more next time.
# Site words (partitions, accounts) are the profile's; a rule names only its tier.
# With the runtime section `sizing: {from_usage: true}` (a profile's setting) a rule that
# has run before asks for what it used instead, x headroom, within the partition's limits
# (hpcpipe.sizing); a rule without history keeps its tier.
TIERS = {
    "tiny": {"mem_mb": 1000, "runtime": 10, "threads": 1},
    "array": {"mem_mb": 4000, "runtime": 60, "threads": 2},
    "score": {"mem_mb": 4000, "runtime": 10, "threads": 1},
    "train": {"mem_mb": 4000, "runtime": 120, "threads": 1},
}
# Every rule's shell ends with the same arguments (hpcpipe.usage): its wildcards and what
# it asked for (mem_mb, runtime), recorded next to what it used (`hpcpipe usage`).


def job_function(fn):
    """``fn`` with its signature worked out once: Snakemake inspects the signature of a
    params or resources function for every job it plans (10,000s in a large sweep)."""
    fn.__signature__ = inspect.signature(fn)
    # Snakemake's own hook for a known signature: read before it calls inspect again.
    fn._overwrite_params = fn.__signature__.parameters
    return fn


def tier_threads(name):
    return TIERS[name]["threads"]


def tier_resources(name, **extra):
    """A tier's mem_mb and runtime (or those sized from usage), scaled by the attempt, plus
    the rule's own extras."""
    from hpcpipe.sizing import partition_of, sized

    def size(resource):
        @job_function
        def value(wildcards, attempt, rulename):
            part = partition_of(workflow.resource_settings, rulename)
            tier = TIERS[name][resource]
            return sized(
                config.get("sizing"), rulename, wildcards, resource, tier, attempt, part
            )

        return value

    return {"mem_mb": size("mem_mb"), "runtime": size("runtime"), **extra}


def conda_env(stage):
    """The pinned environment of a stage (envs/), for --sdm conda."""
    return f"../../envs/{stage}.yaml"


# The exact config each step depends on: Snakemake reruns a step when its params change.
# (Whether the data can serve the split, lags and leads is checked above, before any job.)
def data_params():
    if config["dataset"]["source"] == "builtin":
        return as_json(
            {"builtin": config["dataset"]["builtin"], "variables": VARIABLES}
        )
    ingest = {k: config["ingest"][k] for k in ("rename", "select", "group")}
    # A token per input path from its size, mtime and inode, and its content checksum when
    # its ctime moved: a file replaced with its old mtime kept still reruns ingest
    # (hpcpipe.fingerprint; ingest records them in the raw store)
    ingest["inputs"] = input_tokens(config["ingest"]["path"], RAW)
    return as_json({**ingest, "variables": VARIABLES})


# Once per parse: the tokens stat every input file (every file of a Zarr store).
DATA_PARAMS = data_params()


# An existing raw store that is current (ingested with these params): is a variable all NaN
# or constant over the training period? Before any job, since Snakemake removes the previous
# preprocessed store before the preprocess job would fail on it.
if config["dataset"]["source"] == "file":
    from hpcpipe.ingest_checks import training_period_problems

    _problems = training_period_problems(
        RAW, DATA_PARAMS, config["preprocess"]["split"], VARIABLES
    )
    if _problems:
        raise WorkflowError("; ".join(_problems))


def check_raw_params():
    return as_json({"variables": VARIABLES, "split": config["preprocess"]["split"]})


def preprocess_params():
    return as_json(
        {"variables": VARIABLES, **config["preprocess"], "climatology": CLIMATOLOGY}
    )


def thresholds_params():
    return as_json({"extreme_quantile": config["evaluate"]["extreme_quantile"]})


def features_params():
    return as_json(config["features"])


@job_function
def train_params(wildcards):
    # Per run, without the lists of models and seeds: adding a seed or a sweep point must
    # not retrain the others (hpcpipe.sweep.train_params).
    found = RUNS.get((wildcards.model, wildcards.seed + wildcards.point))
    if found is None:  # a target asked for by path, for another model, seed or point
        raise WorkflowError(
            f"{wildcards.model}/{wildcards.seed}{wildcards.point} is not a run of this config "
            f"(train.models {MODELS}, train.seeds {SEEDS}, sweep); add it there or ask for one"
        )
    return found[1]


def predict_params():
    return as_json({"variables": VARIABLES})


# optimize (workflow/rules/optimize.smk): each step's params hold only the keys it uses.
OPTIMIZE = config["optimize"]
OPTIMIZE_PER_RUN = [v for v in OPTIMIZE["variants"] if v in PER_RUN]
OPTIMIZE_DISTILL = "distilled" in OPTIMIZE["variants"]


def optimize_variant_params(wildcards):
    if wildcards.variant == "quantized":
        return as_json({"calibration_samples": OPTIMIZE["calibration_samples"]})
    return as_json({"prune": OPTIMIZE["prune"]})


def optimize_score_params():
    return as_json(
        {
            "benchmark": OPTIMIZE["benchmark"],
            # what scoring reads (not evaluate.external: other forecasts are not scored here)
            "evaluate": {
                k: config["evaluate"][k] for k in ("headline_lead", "extreme_quantile")
            },
            "variables": VARIABLES,
        }
    )


def optimize_metrics():
    """Every variant's metrics.json: the per-run ones, then the student's."""
    per_run = [
        path
        for variant in OPTIMIZE_PER_RUN
        for path in run_outputs(
            f"results/optimize/{{model}}/{{seed}}{{point}}/{variant}/metrics.json"
        )
    ]
    return per_run + (
        ["results/optimize/distilled/metrics.json"] if OPTIMIZE_DISTILL else []
    )


def evaluate_params():
    # without `external`: its stores are inputs, and their names and paths are in the command
    scoring = {k: v for k, v in config["evaluate"].items() if k != "external"}
    return as_json({"variables": VARIABLES, **scoring})


# Forecasts made elsewhere, scored beside the baselines (evaluate.external: name -> store);
# checked against what the config fixes before any job (hpcpipe.forecasts), the rest (the
# test samples' times, a file's grid and units) at the start of evaluate.
EXTERNAL = config["evaluate"].get("external") or {}
if EXTERNAL:
    from hpcpipe.forecasts import plan_problems

    _problems = plan_problems(EXTERNAL, config)
    if _problems:
        raise WorkflowError("; ".join(_problems))


def external_stores():
    """evaluate's --external: {name: path} as JSON."""
    return as_json(EXTERNAL)


def export_params():
    return as_json({"variables": VARIABLES})


# What the end of a run says (Snakefile's onsuccess/onerror): where the results are, and
# how to go on after a failure. Rules' paths, so the messages follow the rules.
def finished_message():
    table, chart = rules.summary.output.table, rules.summary.output.chart
    return (
        f"hpcpipe: done. Skill of every model against persistence and climatology: {table} "
        f"(chart: {chart}). The report with every plot and the provenance: "
        "snakemake --report results/report.html"
    )


def failed_message():
    return (
        "hpcpipe: a step failed; its log is shown above (logs/<step>.log). Fix the cause "
        "and run the same snakemake command again: finished steps are kept, and training "
        "resumes from its last checkpoint."
    )
