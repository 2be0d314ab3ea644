rule evaluate:
    input:
        model="results/models/{model}/{seed}/model.pt",
        history="results/models/{model}/{seed}/history.csv",
        features="results/features/test.zarr",
        preprocessed="results/preprocessed.zarr",
        thresholds="results/thresholds.zarr",
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
        "../../envs/evaluate.yaml"
    threads: tier_threads("tiny")
    resources:
        mem_mb=tier_mem("array"),
        runtime=tier_runtime("tiny"),
    params:
        cfg=evaluate_params(),
    shell:
        "hpcpipe evaluate --params {params.cfg:q} --model {input.model:q} "
        "--features {input.features:q} --preprocessed {input.preprocessed:q} "
        "--thresholds {input.thresholds:q} --output-dir results/eval/{wildcards.model:q}/{wildcards.seed:q} "
        "--threads {threads} --log {log:q}"


rule summary:
    input:
        expand("results/eval/{model}/{seed}/metrics.json", model=MODELS, seed=SEEDS),
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
    log:
        "logs/summary.log",
    conda:
        "../../envs/evaluate.yaml"
    threads: tier_threads("tiny")
    resources:
        mem_mb=tier_mem("tiny"),
        runtime=tier_runtime("tiny"),
    params:
        title=config["report"]["title"],
    shell:
        "hpcpipe summary --metrics {input:q} --output-csv {output.table:q} "
        "--output-png {output.chart:q} --title {params.title:q} "
        "--provenance {output.provenance:q} --log {log:q}"
