# One job per (row, seed): `--cores` or a cluster executor runs them in parallel. Rows are Table 2's, T0 and the
# Table 1 baselines (cpsl.config.rows); a train job's params are its row's (an edit of one baseline reruns that one only).
# `gpu` = GPUs (or GPU slots, see CPSL_GPU_SLOTS) a job uses: `--resources gpu=4` caps the concurrent GPU jobs
# on a local box (cpsl.runtime.gpu_slots picks which device each gets); the SLURM executor turns it into --gpus.

rule train:
    input:
        str(paths.processed_path(DATASET)),
        lambda wildcards: code("train", wildcards.ablation),
    output:
        f"{RUN}/best.pt",
        f"{RUN}/history.csv",
        f"{RUN}/train_summary.json",
        directory(f"{RUN}/dvclive"),
    wildcard_constraints:
        ablation=ROW_PATTERN,
        seed="[0-9]+",
    params:
        slice=lambda wildcards: params_slice("train", wildcards.ablation),
    resources:
        gpu=config["execution"]["nproc"],
    log:
        log_file("train", "{ablation}-seed{seed}"),
    benchmark:
        benchmark_file("train")
    conda:
        CONDA_ENV
    shell:
        "cpsl train --ablation {wildcards.ablation} --seed {wildcards.seed} > {log} 2>&1"


rule evaluate:
    input:
        f"{RUN}/best.pt",
        f"{RUN}/history.csv",
        str(paths.processed_path(DATASET)),
        lambda wildcards: code("evaluate", wildcards.ablation),
    output:
        report(f"{RUN}/metrics.json", caption="../report/run_metrics.rst", category="Runs",
               subcategory="{ablation}", labels={"row": "{ablation}", "seed": "{seed}", "file": "metrics.json"}),
        f"{RUN}/predictions.csv",
    wildcard_constraints:
        ablation=ROW_PATTERN,
        seed="[0-9]+",
    params:
        slice=params_slice("evaluate"),
    resources:
        gpu=1,
    # no benchmark: Snakemake counts it as an output for its times, so after `dvc repro` retrained a run (a new
    # best.pt, newer than this job's record) Snakemake would re-evaluate a run DVC had just evaluated
    log:
        log_file("evaluate", "{ablation}-seed{seed}"),
    conda:
        CONDA_ENV
    shell:
        f"cpsl evaluate --run results/{DATASET}/{{wildcards.ablation}}-seed{{wildcards.seed}} > {{log}} 2>&1"
