# A run's test-period forecasts in physical units, WeatherBench 2's layout (hpcpipe.forecasts):
# what evaluate scores, and what can be compared with forecasts made elsewhere.
rule predict:
    input:
        model=rules.train.output.model,
        features=rules.features.output.test,
        preprocessed=rules.preprocess.output.store,
        stats=rules.preprocess.output.stats,
    output:
        directory("results/forecasts/{model}/{seed}{point}.zarr"),
    log:
        "logs/predict/{model}/{seed}{point}.log",
    conda:
        conda_env("train")
    threads: tier_threads("score")
    resources:
        **tier_resources("score"),
    params:
        cfg=predict_params(),
    shell:
        "hpcpipe predict --params {params.cfg:q} --model {input.model:q} "
        "--features {input.features:q} --preprocessed {input.preprocessed:q} "
        "--stats {input.stats:q} --output {output:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


# Scores stored forecasts: the run's, and those of evaluate.external (checked before any job).
rule evaluate:
    input:
        forecasts=rules.predict.output[0],
        history=rules.train.output.history,
        features=rules.features.output.test,
        preprocessed=rules.preprocess.output.store,
        thresholds=rules.thresholds.output[0],
        stats=rules.preprocess.output.stats,
        external=EXTERNAL.values(),
    output:
        metrics="results/eval/{model}/{seed}{point}/metrics.json",
        table=report(
            "results/eval/{model}/{seed}{point}/metrics.csv",
            caption="../report/metrics.rst",
            category="Evaluation",
            subcategory="{model} seed {seed}{point}",
        ),
        skill=report(
            "results/eval/{model}/{seed}{point}/skill_vs_lead.png",
            caption="../report/skill_vs_lead.rst",
            category="Evaluation",
            subcategory="{model} seed {seed}{point}",
        ),
        maps=report(
            "results/eval/{model}/{seed}{point}/error_maps.png",
            caption="../report/error_maps.rst",
            category="Evaluation",
            subcategory="{model} seed {seed}{point}",
        ),
        loss=report(
            "results/eval/{model}/{seed}{point}/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="{model} seed {seed}{point}",
        ),
    log:
        "logs/evaluate/{model}/{seed}{point}.log",
    conda:
        conda_env("evaluate")
    threads: tier_threads("score")
    resources:
        **tier_resources("score"),
    params:
        cfg=evaluate_params(),
        external=external_stores(),
    shell:
        "hpcpipe evaluate --params {params.cfg:q} --forecasts {input.forecasts:q} "
        "--history {input.history:q} --features {input.features:q} "
        "--preprocessed {input.preprocessed:q} --thresholds {input.thresholds:q} "
        "--stats {input.stats:q} --external {params.external:q} "
        "--metrics {output.metrics:q} --table {output.table:q} --skill {output.skill:q} "
        "--maps {output.maps:q} --loss {output.loss:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


rule summary:
    input:
        run_outputs(rules.evaluate.output.metrics),
    output:
        table=report(
            "results/summary.csv", caption="../report/summary.rst", category="Summary"
        ),
        chart=report(
            "results/summary.png",
            caption="../report/summary_chart.rst",
            category="Summary",
        ),
        provenance=report(
            "results/provenance.txt",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
        # included by workflow/report/workflow.rst: the result on the report's first page
        landing="results/landing.rst",
    log:
        "logs/summary.log",
    conda:
        conda_env("evaluate")
    threads: tier_threads("tiny")
    resources:
        **tier_resources("tiny"),
    params:
        title=config["report"]["title"],
        # the runs as the sweep's spec and a path pattern, not 10,000 paths (hpcpipe.steps);
        # the pattern a function: a string with {wildcards} here would be expanded
        runs=spec(config),
        pattern=lambda wildcards: str(rules.evaluate.output.metrics),
    shell:
        "hpcpipe summary --runs {params.runs:q} --metrics-pattern {params.pattern:q} "
        "--output-csv {output.table:q} "
        "--output-png {output.chart:q} --title {params.title:q} "
        "--provenance {output.provenance:q} --landing {output.landing:q} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


if config["sweep"] is not None:

    # A sweep's runs ranked by validation loss (hpcpipe.evaluate.leaderboard). The runs
    # reach the step as the sweep's spec and a path pattern, not as 10,000 paths.
    rule leaderboard:
        input:
            run_outputs(rules.evaluate.output.metrics),
        output:
            table=report(
                "results/leaderboard.csv",
                caption="../report/leaderboard.rst",
                category="Summary",
            ),
            chart=report(
                "results/sweep.png",
                caption="../report/sweep_chart.rst",
                category="Summary",
            ),
            # included by workflow/report/workflow.rst in a sweep: the top runs and effects
            page="results/sweep.rst",
        log:
            "logs/leaderboard.log",
        conda:
            conda_env("evaluate")
        threads: tier_threads("tiny")
        resources:
            **tier_resources("tiny"),
        params:
            runs=rules.summary.params.runs,
            pattern=rules.summary.params.pattern,
        shell:
            "hpcpipe leaderboard --runs {params.runs:q} --metrics-pattern {params.pattern:q} "
            "--output-csv {output.table:q} --output-png {output.chart:q} "
            "--output-rst {output.page:q} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


# what rule all asks for beyond the summary: the leaderboard, in a sweep
SWEEP_RESULTS = (
    [rules.leaderboard.output.table, rules.leaderboard.output.chart]
    if config["sweep"] is not None
    else []
)
