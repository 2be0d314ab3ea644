rule features:
    input:
        "results/preprocessed.zarr",
    output:
        train=directory("results/features/train.zarr"),
        val=directory("results/features/val.zarr"),
        test=directory("results/features/test.zarr"),
    log:
        "logs/features.log",
    conda:
        "../../envs/data.yaml"
    threads: tier_threads("array")
    resources:
        mem_mb=tier_mem("array"),
        runtime=tier_runtime("array"),
    params:
        cfg=features_params(),
    shell:
        "hpcpipe features --params {params.cfg:q} --input {input:q} --train {output.train:q} "
        "--val {output.val:q} --test {output.test:q} --threads {threads} --log {log:q}"
