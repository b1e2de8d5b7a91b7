# The papers' observations (cheap: reads the results files), then the report: paper-form tables
# and plots from every results file the DAG declares.


rule observe:
    input:
        RESULTS,
    output:
        "reports/observations.json",
    params:
        cfg=qpipe.param_hash(config, "observe"),
    threads: 1
    resources:
        **qpipe.resources("observe"),
    benchmark: f"logs/benchmarks/observe/{DS}.tsv"
    log:
        qc.LOGS["observe"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/observe.py"


rule report:
    input:
        RESULTS,
        "reports/observations.json",
        "reports/pretrain.json" if qc.trains_model(config) else MODEL_DIR,
    output:
        # report(...): what `snakemake --report report.html` shows (captions in workflow/report/)
        report("reports/report.md", caption="../report/report.rst", category="Report"),
        "reports/report.html",
        "reports/summary.json",
        report(directory("reports/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
               category="Figures"),
        "reports/metrics.json",
        directory("reports/plots"),
        report(directory("reports/tables"), patterns=["{name}.csv"], caption="../report/tables.rst",
               category="Tables"),
    params:
        # what the report reads besides the results (the grid, the report settings)
        cfg=qpipe.param_hash(config, "report"),
    threads: 1
    resources:
        **qpipe.resources("report"),
    benchmark: f"logs/benchmarks/report/{DS}.tsv"
    log:
        qc.LOGS["report"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/report.py"
