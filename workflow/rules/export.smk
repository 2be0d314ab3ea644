# A self-contained inference artifact per run (hpcpipe.export): torch.export's model.pt2
# (TorchScript where export cannot) with its metadata and a standalone predict.py.
rule export:
    input:
        model=rules.train.output.model,
        features=rules.features.output.test,
        preprocessed=rules.preprocess.output.store,
        stats=rules.preprocess.output.stats,
    output:
        directory("results/export/{model}/{seed}{point}"),
    log:
        "logs/export/{model}/{seed}{point}.log",
    conda:
        conda_env("train")
    threads: tier_threads("score")
    resources:
        **tier_resources("score"),
    params:
        cfg=export_params(),
    shell:
        "hpcpipe export --params {params.cfg:q} --model {input.model:q} "
        "--features {input.features:q} --preprocessed {input.preprocessed:q} "
        "--stats {input.stats:q} --output {output:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


# `snakemake export`: every run's artifact.
rule export_all:
    input:
        run_outputs(rules.export.output[0]),
