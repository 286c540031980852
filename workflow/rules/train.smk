# One job per (row, seed): `--cores` or a cluster executor runs them in parallel. Rows are Table 2's, T0 and the
# Table 1 baselines (cpsl.rows); a train job's params are its row's (an edit of one baseline reruns that one only).
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
        ablation=ROW_PATTERN,
        seed="[0-9]+",
    params:
        slice=lambda wildcards: params_slice("train", wildcards.ablation),
    resources:
        gpu=config["execution"]["nproc"],
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
        ablation=ROW_PATTERN,
        seed="[0-9]+",
    params:
        slice=params_slice("evaluate"),
    resources:
        gpu=1,
    shell:
        "cpsl evaluate --run results/" + DATASET + "/{wildcards.ablation}-seed{wildcards.seed}"
