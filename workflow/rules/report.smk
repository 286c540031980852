# Each output is flagged for `snakemake --report report.html` (captions in workflow/report/, one category each).
REPORT_CATEGORIES = {".md": "Tables", ".csv": "Tables", ".png": "Figures", ".json": "Summary"}


rule report:
    input:
        run_outputs(),
        code("report"),
    output:
        [report(path, caption=f"../report/{Path(path).stem}.rst", category=REPORT_CATEGORIES[Path(path).suffix])
         for path in report_outputs()],
    params:
        slice=params_slice("report"),
    log:
        log_file("report"),
    conda:
        CONDA_ENV
    shell:
        # the report reads exactly these runs: the configured rows, plus the whole grid (grid=true) or Table 1's rows
        # (table1=true)
        "cpsl report" + (" --grid" if GRID else "") + (" --table1" if TABLE1 else "") + " > {log} 2>&1"


# Snakemake only (DVC has no per-job benchmark): the wall time and peak memory of every train job, one table.
# It runs after the report (summary.json as input: it writes into the folder the report swaps in as one set, and
# the swap carries it over), but is rebuilt only when a train job's benchmark changes: summary.json is ancient()
# (an order, not a freshness), so a report rerun by DVC or by an evaluate param does not make this job stale.
rule benchmarks:
    input:
        tsv=run_benchmarks(),
        after=ancient(str(paths.summary_path(DATASET))),
    output:
        report(benchmarks_table(), caption="../report/benchmarks.rst", category="Benchmarks"),
    log:
        log_file("benchmarks"),
    conda:
        CONDA_ENV
    shell:
        "python3 -m cpsl.report.job_benchmarks {output} {input.tsv} > {log} 2>&1"
