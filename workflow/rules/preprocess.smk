rule preprocess:
    input:
        raw=RAW_STORE,
        checked=RAW_CHECKED,
    output:
        store=directory("results/preprocessed.zarr"),
        stats="results/stats.json",
    log:
        "logs/preprocess.log",
    conda:
        conda_env("data")
    threads: tier_threads("array")
    resources:
        **tier_resources("array"),
    params:
        cfg=preprocess_params(),
    shell:
        "hpcpipe preprocess --params {params.cfg:q} --input {input.raw:q} "
        "--output {output.store:q} --stats {output.stats:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"


rule thresholds:
    input:
        rules.preprocess.output.store,
    output:
        directory("results/thresholds.zarr"),
    log:
        "logs/thresholds.log",
    conda:
        conda_env("data")
    threads: tier_threads("array")
    resources:
        **tier_resources("array"),
    params:
        cfg=thresholds_params(),
    shell:
        "hpcpipe thresholds --params {params.cfg:q} --input {input:q} --output {output:q} "
        "--threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"
