rule features:
    input:
        rules.preprocess.output.store,
    output:
        train=directory("results/features/train.zarr"),
        val=directory("results/features/val.zarr"),
        test=directory("results/features/test.zarr"),
    log:
        "logs/features.log",
    conda:
        conda_env("data")
    threads: tier_threads("array")
    resources:
        **tier_resources("array"),
    params:
        cfg=features_params(),
    shell:
        "hpcpipe features --params {params.cfg:q} --input {input:q} --train {output.train:q} "
        "--val {output.val:q} --test {output.test:q} --threads {threads} --log {log:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"
