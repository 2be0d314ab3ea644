# The raw store: generated (built-in dataset) or ingested from a NetCDF/Zarr file.
if config["dataset"]["source"] == "builtin":

    rule generate:
        output:
            directory("data/raw.zarr"),
        log:
            "logs/generate.log",
        conda:
            conda_env("data")
        threads: tier_threads("array")
        resources:
            **tier_resources("array"),
        params:
            cfg=data_params(),
        shell:
            "hpcpipe generate --params {params.cfg:q} --output {output:q} "
            "--threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    RAW_STORE = rules.generate.output[0]

else:

    rule ingest:
        input:
            config["ingest"]["path"],
        output:
            directory("data/raw.zarr"),
        log:
            "logs/ingest.log",
        conda:
            conda_env("data")
        threads: tier_threads("array")
        resources:
            **tier_resources("array"),
        params:
            cfg=data_params(),
        shell:
            "hpcpipe ingest --params {params.cfg:q} --input {input:q} --output {output:q} "
            "--threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    RAW_STORE = rules.ingest.output[0]
