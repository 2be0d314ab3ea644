# The raw store: generated (built-in dataset) or ingested from a NetCDF/Zarr file.
if config["dataset"]["source"] == "builtin":

    rule generate:
        output:
            directory(RAW),
        log:
            "logs/generate.log",
        conda:
            conda_env("data")
        threads: tier_threads("array")
        resources:
            **tier_resources("array"),
        params:
            cfg=DATA_PARAMS,
        shell:
            "hpcpipe generate --params {params.cfg:q} --output {output:q} "
            "--threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    RAW_STORE = rules.generate.output[0]
    RAW_CHECKED = []  # generated fields vary over any period

else:

    rule ingest:
        input:
            config["ingest"]["path"],
        output:
            directory(RAW),
        log:
            "logs/ingest.log",
        conda:
            conda_env("data")
        threads: tier_threads("array")
        resources:
            **tier_resources("array"),
        params:
            cfg=DATA_PARAMS,
        shell:
            "hpcpipe ingest --params {params.cfg:q} --input {input:q} --output {output:q} "
            "--threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    RAW_STORE = rules.ingest.output[0]

    # Its own job between ingest and preprocess: a variable all NaN or constant over the
    # training period fails here, before Snakemake removes the previous preprocessed store
    # to run preprocess again. (When the raw store is current, common.smk refuses it even
    # before any job.)
    rule check_raw:
        input:
            RAW_STORE,
        output:
            "data/raw.checked.json",
        log:
            "logs/check_raw.log",
        conda:
            conda_env("data")
        threads: tier_threads("tiny")
        resources:
            **tier_resources("tiny"),
        params:
            cfg=check_raw_params(),
        shell:
            "hpcpipe check-raw --params {params.cfg:q} --input {input:q} --output {output:q} "
            "--threads {threads} --log {log:q}"
            " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"

    RAW_CHECKED = rules.check_raw.output
