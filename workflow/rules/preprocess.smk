rule preprocess:
    input:
        "data/raw.zarr",
    output:
        store=directory("results/preprocessed.zarr"),
        stats="results/stats.json",
    log:
        "logs/preprocess.log",
    conda:
        "../../envs/data.yaml"
    threads: tier_threads("array")
    resources:
        mem_mb=tier_mem("array"),
        runtime=tier_runtime("array"),
    params:
        cfg=preprocess_params(),
    shell:
        "hpcpipe preprocess --params {params.cfg:q} --input {input:q} "
        "--output {output.store:q} --stats {output.stats:q} --threads {threads} --log {log:q}"


rule thresholds:
    input:
        "results/preprocessed.zarr",
    output:
        directory("results/thresholds.zarr"),
    log:
        "logs/thresholds.log",
    conda:
        "../../envs/data.yaml"
    threads: tier_threads("array")
    resources:
        mem_mb=tier_mem("array"),
        runtime=tier_runtime("array"),
    params:
        cfg=thresholds_params(),
    shell:
        "hpcpipe thresholds --params {params.cfg:q} --input {input:q} --output {output:q} "
        "--threads {threads} --log {log:q}"
