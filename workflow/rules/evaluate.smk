rule evaluate:
    input:
        model=rules.train.output.model,
        history=rules.train.output.history,
        features=rules.features.output.test,
        preprocessed=rules.preprocess.output.store,
        thresholds=rules.thresholds.output[0],
    output:
        metrics="results/eval/{model}/{seed}/metrics.json",
        table=report(
            "results/eval/{model}/{seed}/metrics.csv",
            caption="../report/metrics.rst",
            category="Evaluation",
            subcategory="{model} seed {seed}",
        ),
        skill=report(
            "results/eval/{model}/{seed}/skill_vs_lead.png",
            caption="../report/skill_vs_lead.rst",
            category="Evaluation",
            subcategory="{model} seed {seed}",
        ),
        maps=report(
            "results/eval/{model}/{seed}/error_maps.png",
            caption="../report/error_maps.rst",
            category="Evaluation",
            subcategory="{model} seed {seed}",
        ),
        loss=report(
            "results/eval/{model}/{seed}/loss_curve.png",
            caption="../report/loss_curve.rst",
            category="Training",
            subcategory="{model} seed {seed}",
        ),
    log:
        "logs/evaluate/{model}/{seed}.log",
    conda:
        conda_env("evaluate")
    threads: tier_threads("score")
    resources:
        **tier_resources("score"),
    params:
        cfg=evaluate_params(),
    shell:
        "hpcpipe evaluate --params {params.cfg:q} --model {input.model:q} "
        "--history {input.history:q} --features {input.features:q} "
        "--preprocessed {input.preprocessed:q} --thresholds {input.thresholds:q} "
        "--metrics {output.metrics:q} --table {output.table:q} --skill {output.skill:q} "
        "--maps {output.maps:q} --loss {output.loss:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


rule summary:
    input:
        expand(rules.evaluate.output.metrics, model=MODELS, seed=SEEDS),
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
    shell:
        "hpcpipe summary --metrics {input:q} --output-csv {output.table:q} "
        "--output-png {output.chart:q} --title {params.title:q} "
        "--provenance {output.provenance:q} --landing {output.landing:q} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"
