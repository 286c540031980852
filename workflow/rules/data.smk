# The output is the manifest, not the folder: prepare writes it last and atomically once the folder is complete
# (cpsl.stages.prepare), so a folder a failed or killed prepare left (even an empty data/raw/<dataset>/) has none and
# Snakemake reruns prepare. update(): Snakemake must not delete it before rerunning prepare; prepare removes it
# itself before changing anything and keeps verified files (dvc.yaml: persist: true).
rule prepare:
    output:
        update(str(paths.manifest_path(DATASET))),
    input:
        code("prepare"),
    params:
        slice=params_slice("prepare"),
    log:
        log_file("prepare"),
    conda:
        CONDA_ENV
    shell:
        "cpsl prepare > {log} 2>&1"


rule align:
    input:
        str(paths.manifest_path(DATASET)),
        code("align"),
    output:
        str(paths.processed_path(DATASET)),
        str(paths.processed_path(DATASET).with_suffix(".report.json")),
    params:
        slice=params_slice("align"),
    log:
        log_file("align"),
    conda:
        CONDA_ENV
    shell:
        "cpsl align > {log} 2>&1"
