rule preprocess:
    input:
        "data/raw.zarr",
    output:
        store=directory("results/preprocessed.zarr"),
        stats="results/stats.json",
    params:
        cfg=preprocess_params(),
    log:
        "logs/preprocess.log",
    threads: tier_threads("array")
    resources:
        mem_mb=tier_mem("array"),
        runtime=tier_runtime("array"),
    shell:
        "hpcpipe preprocess --params {params.cfg:q} --input {input:q} "
        "--output {output.store:q} --stats {output.stats:q} --threads {threads} --log {log:q}"


rule thresholds:
    input:
        "results/preprocessed.zarr",
    output:
        directory("results/thresholds.zarr"),
    params:
        cfg=thresholds_params(),
    log:
        "logs/thresholds.log",
    threads: tier_threads("array")
    resources:
        mem_mb=tier_mem("array"),
        runtime=tier_runtime("array"),
    shell:
        "hpcpipe thresholds --params {params.cfg:q} --input {input:q} --output {output:q} "
        "--threads {threads} --log {log:q}"
