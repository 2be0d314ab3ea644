# One job per model and seed. The step launches its own ranks with `hpcpipe launch`:
# local processes on a laptop, `srun -n tasks` in a SLURM job (hpcpipe/runtime/launch.py).
# Checkpoints live in .checkpoints/, outside the outputs: Snakemake deletes the outputs of a
# failed job, and a rerun resumes from the checkpoints (hpcpipe/train/checkpoint.py).
rule train:
    input:
        train=rules.features.output.train,
        val=rules.features.output.val,
    output:
        model="results/models/{model}/{seed}{point}/model.pt",
        history="results/models/{model}/{seed}{point}/history.csv",
    log:
        "logs/train/{model}/{seed}{point}.log",
    conda:
        conda_env("train")
    threads: tier_threads("train")
    resources:
        **tier_resources("train", tasks=1),
    params:
        cfg=train_params,
    shell:
        "hpcpipe launch -n {resources.tasks} hpcpipe train --params {params.cfg:q} "
        "--train {input.train:q} --val {input.val:q} --model {wildcards.model:q} "
        "--seed {wildcards.seed:q} --output {output.model:q} --history {output.history:q} "
        "--threads {threads} --log {log:q} "
        "--checkpoints .checkpoints/{wildcards.model:q}/{wildcards.seed:q}{wildcards.point:q}"
        " --wildcards={wildcards:q} --mem-mb {resources.mem_mb} --runtime {resources.runtime}"
