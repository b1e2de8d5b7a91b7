# The report: paper-form tables and plots from every results file the DAG declares.


rule report:
    input:
        RESULTS,
        "reports/pretrain.json" if qc.trains_model(config) else MODEL_DIR,
    output:
        "reports/report.md",
        "reports/report.html",
        "reports/summary.json",
        directory("reports/figures"),
    params:
        overrides=OVERRIDES,
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    benchmark: f"logs/benchmarks/report/{DS}.tsv"
    log:
        qc.LOGS["report"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/report.py{params.overrides}"
