# The raw store: generated (built-in dataset) or ingested from a NetCDF/Zarr file.
if config["dataset"]["source"] == "builtin":

    rule generate:
        output:
            directory("data/raw.zarr"),
        log:
            "logs/generate.log",
        conda:
            "../../envs/data.yaml"
        threads: tier_threads("array")
        resources:
            mem_mb=tier_mem("array"),
            runtime=tier_runtime("array"),
        params:
            cfg=data_params(),
        shell:
            "hpcpipe generate --params {params.cfg:q} --output {output:q} "
            "--threads {threads} --log {log:q}"

else:

    rule ingest:
        input:
            config["ingest"]["path"],
        output:
            directory("data/raw.zarr"),
        log:
            "logs/ingest.log",
        conda:
            "../../envs/data.yaml"
        threads: tier_threads("array")
        resources:
            mem_mb=tier_mem("array"),
            runtime=tier_runtime("array"),
        params:
            cfg=data_params(),
        shell:
            "hpcpipe ingest --params {params.cfg:q} --input {input:q} --output {output:q} "
            "--threads {threads} --log {log:q}"
