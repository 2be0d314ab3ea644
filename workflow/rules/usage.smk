# What every step asked for against what it used (hpcpipe usage), after the last step: a
# table for the report and a chart of requested vs used memory and time per rule. It reads
# the manifests only, so it runs where Snakemake runs (no job of its own on a cluster).
localrules:
    usage_table,


rule usage_table:
    input:
        rules.summary.output.table,
    output:
        table=report(
            "results/usage.csv", caption="../report/usage.rst", category="Resources"
        ),
        chart=report(
            "results/usage.png", caption="../report/usage.rst", category="Resources"
        ),
    log:
        "logs/usage.log",
    conda:
        conda_env("evaluate")
    shell:
        "hpcpipe usage-table --after {input:q} --output-csv {output.table:q} "
        "--output-png {output.chart:q} --log {log:q}"
