# hpcpipe: generate|ingest -> preprocess -> features -> train (models x seeds) -> evaluate -> summary
# The same workflow runs on a laptop (profiles/default, picked up automatically) and on
# SLURM (--profile profiles/slurm). All logic lives in src/hpcpipe; rules only wire it.
from snakemake.logging import logger
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/optimize.smk"
include: "workflow/rules/usage.smk"


rule all:
    default_target: True
    input:
        rules.summary.output.table,
        rules.summary.output.chart,
        rules.usage_table.output.table,
        SWEEP_RESULTS,
        OPTIMIZE_RESULTS,


# `snakemake export`: every run's inference artifact (workflow/rules/export.smk); not in
# `all`, since torch.export takes about 8 s a model on 2 cores.
rule export:
    input:
        run_outputs(rules.export_run.output[0]),


onsuccess:
    logger.info(finished_message())


onerror:
    logger.error(failed_message())
