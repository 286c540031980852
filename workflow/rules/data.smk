# update(): Snakemake must not delete the raw folder before rerunning prepare (a params change would
# otherwise throw away finished downloads); prepare itself keeps verified files (dvc.yaml: persist: true)
rule prepare:
    output:
        update(directory(str(paths.raw_dir(DATASET)))),
    input:
        code("prepare"),
    params:
        slice=params_slice("prepare"),
    shell:
        "cpsl prepare"


rule align:
    input:
        str(paths.raw_dir(DATASET)),
        code("align"),
    output:
        str(paths.processed_path(DATASET)),
        str(paths.processed_path(DATASET).with_suffix(".report.json")),
    params:
        slice=params_slice("align"),
    shell:
        "cpsl align"
