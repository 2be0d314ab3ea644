# One job per model and seed. The step launches its own ranks: `hpcpipe launch` locally,
# `srun` under the SLURM profile (set-resources: mpi, tasks, gpu).
rule train:
    input:
        train="results/features/train.zarr",
        val="results/features/val.zarr",
    output:
        model="results/models/{model}/{seed}/model.pt",
        history="results/models/{model}/{seed}/history.csv",
    log:
        "logs/train/{model}/{seed}.log",
    conda:
        "../../envs/train.yaml"
    threads: tier_threads("train")
    resources:
        mem_mb=tier_mem("train"),
        runtime=tier_runtime("train"),
        tasks=1,
        mpi="hpcpipe launch",
    params:
        cfg=train_params,
    shell:
        "{resources.mpi} -n {resources.tasks} hpcpipe train --params {params.cfg:q} "
        "--features results/features --model {wildcards.model:q} --seed {wildcards.seed} "
        "--output {output.model:q} --history {output.history:q} --threads {threads} --log {log:q}"
