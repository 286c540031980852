def run_outputs():
    files = []
    for ablation in grid_ablations():
        for seed in SEEDS:
            base = run_dir(ablation, seed)
            files += [f"{base}/metrics.json", f"{base}/predictions.csv", f"{base}/history.csv"]
    return files


rule report:
    input:
        run_outputs(),
        code("report"),
    output:
        report_outputs(),
    params:
        slice=params_slice("report"),
    shell:
        # the report reads exactly these runs: the configured rows, plus the whole grid (grid=true) or Table 1's rows
        # (table1=true)
        "cpsl report" + (" --grid" if GRID else "") + (" --table1" if TABLE1 else "")
