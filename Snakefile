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
include: "workflow/rules/usage.smk"


rule all:
    default_target: True
    input:
        rules.summary.output.table,
        rules.summary.output.chart,
        rules.usage_table.output.table,
        SWEEP_RESULTS,


onsuccess:
    logger.info(finished_message())


onerror:
    logger.error(failed_message())
