# A self-contained inference artifact per run (hpcpipe.export): torch.export's model.pt2
# (TorchScript where export cannot) with its metadata and a standalone predict.py.
# Not in `rule all`: about 8 s a model on 2 cores (torch.export traces the network);
# `snakemake export` makes every run's.
rule export_run:
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
        # the rule's name in the usage records (the step's name is `export`)
        rule="export_run",
    shell:
        "hpcpipe export --rule {params.rule:q} --params {params.cfg:q} --model {input.model:q} "
        "--features {input.features:q} --preprocessed {input.preprocessed:q} "
        "--stats {input.stats:q} --output {output:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"
