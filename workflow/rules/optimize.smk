# Compression of the trained models (hpcpipe/optimize, docs/optimize.md), when
# optimize.enabled: an int8 and two pruned variants of every run, a student distilled from
# the run of lowest validation loss, each scored like a model and measured, and a summary.
# Each step's params hold only the optimize keys it uses, so changing `optimize:` reruns
# only optimize steps; the student reads every run's model.pt, so retraining any retrains it.
# The params and inputs: common.smk (OPTIMIZE, optimize_*).
if OPTIMIZE["enabled"]:

    rule optimize_variant:
        input:
            model=rules.train.output.model,
            train=rules.features.output.train,
        output:
            variant="results/optimize/{model}/{seed}{point}/{variant}/model.pt2",
        log:
            "logs/optimize/{model}/{seed}{point}/{variant}.log",
        wildcard_constraints:
            variant="|".join(PER_RUN),
        conda:
            conda_env("train")
        threads: tier_threads("train")
        resources:
            **tier_resources("train"),
        params:
            cfg=optimize_variant_params,
        shell:
            "hpcpipe optimize-variant --params {params.cfg:q} --model {input.model:q} "
            "--train {input.train:q} --variant {wildcards.variant:q} "
            "--output {output.variant:q} --threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    rule optimize_distill:
        input:
            teachers=run_outputs(rules.train.output.model),
            train=rules.features.output.train,
        output:
            student="results/optimize/distilled/model.pt2",
        log:
            "logs/optimize/distilled/distill.log",
        conda:
            conda_env("train")
        threads: tier_threads("train")
        resources:
            **tier_resources("train"),
        params:
            cfg=as_json({"distill": OPTIMIZE["distill"]}),
        shell:
            "hpcpipe optimize-distill --params {params.cfg:q} --teachers {input.teachers:q} "
            "--train {input.train:q} --output {output.student:q} --threads {threads} "
            "--log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    rule optimize_score:
        input:
            variant=rules.optimize_variant.output.variant,
            teacher=rules.train.output.model,
            features=rules.features.output.test,
            preprocessed=rules.preprocess.output.store,
            thresholds=rules.thresholds.output[0],
        output:
            metrics="results/optimize/{model}/{seed}{point}/{variant}/metrics.json",
        log:
            "logs/optimize/{model}/{seed}{point}/{variant}.score.log",
        wildcard_constraints:
            variant="|".join(PER_RUN),
        conda:
            conda_env("evaluate")
        threads: tier_threads("score")
        resources:
            **tier_resources("score"),
        params:
            cfg=optimize_score_params(),
        shell:
            "hpcpipe optimize-score --params {params.cfg:q} --variant {input.variant:q} "
            "--teachers {input.teacher:q} --features {input.features:q} "
            "--preprocessed {input.preprocessed:q} --thresholds {input.thresholds:q} "
            "--output {output.metrics:q} --threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    # The student's teacher is known only once it is distilled: it gets every run's model.pt
    # and takes the one its file names.
    use rule optimize_score as optimize_score_student with:
        input:
            variant=rules.optimize_distill.output.student,
            teacher=run_outputs(rules.train.output.model),
            features=rules.features.output.test,
            preprocessed=rules.preprocess.output.store,
            thresholds=rules.thresholds.output[0],
        output:
            metrics="results/optimize/distilled/metrics.json",
        log:
            "logs/optimize/distilled/score.log",

    rule optimize_summary:
        input:
            optimize_metrics(),
        output:
            table=report(
                "results/optimize/summary.csv",
                caption="../report/optimize_table.rst",
                category="Optimize",
            ),
            chart=report(
                "results/optimize/skill_vs_cost.png",
                caption="../report/optimize_chart.rst",
                category="Optimize",
            ),
        log:
            "logs/optimize/summary.log",
        conda:
            conda_env("evaluate")
        threads: tier_threads("tiny")
        resources:
            **tier_resources("tiny"),
        shell:
            "hpcpipe optimize-summary --metrics {input:q} --output-csv {output.table:q} "
            "--output-png {output.chart:q} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


# what rule all asks for beyond the summary: the optimize summary, when enabled
OPTIMIZE_RESULTS = (
    [rules.optimize_summary.output.table, rules.optimize_summary.output.chart]
    if OPTIMIZE["enabled"]
    else []
)
