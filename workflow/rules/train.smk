# One job per (ablation, seed): `--cores` or a cluster executor runs them in parallel.
# `gpu` = GPUs (or GPU slots, see CPSL_GPU_SLOTS) a job uses: `--resources gpu=4` caps the concurrent GPU jobs
# on a local box (cpsl.gpu_slots picks which device each gets); the SLURM executor turns it into --gpus.

rule train:
    input:
        str(paths.processed_path(DATASET)),
        code("train"),
    output:
        "results/" + DATASET + "/{ablation}-seed{seed}/best.pt",
        "results/" + DATASET + "/{ablation}-seed{seed}/history.csv",
        "results/" + DATASET + "/{ablation}-seed{seed}/train_summary.json",
        directory("results/" + DATASET + "/{ablation}-seed{seed}/dvclive"),
    wildcard_constraints:
        ablation="[A-CT][0-9]",
        seed="[0-9]+",
    params:
        slice=params_slice("train"),
    resources:
        gpu=config["train"]["nproc"],
    shell:
        "cpsl train --ablation {wildcards.ablation} --seed {wildcards.seed}"


rule evaluate:
    input:
        "results/" + DATASET + "/{ablation}-seed{seed}/best.pt",
        "results/" + DATASET + "/{ablation}-seed{seed}/history.csv",
        str(paths.processed_path(DATASET)),
        code("evaluate"),
    output:
        "results/" + DATASET + "/{ablation}-seed{seed}/metrics.json",
        "results/" + DATASET + "/{ablation}-seed{seed}/predictions.csv",
    wildcard_constraints:
        ablation="[A-CT][0-9]",
        seed="[0-9]+",
    params:
        slice=params_slice("evaluate"),
    resources:
        gpu=1,
    shell:
        "cpsl evaluate --run results/" + DATASET + "/{wildcards.ablation}-seed{wildcards.seed}"
