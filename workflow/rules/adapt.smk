# Online test-time adaptation: one job per (method, direction, corruption, severity, seed);
# `seeds` in params.yaml lists the adaptation seeds (each its own results folder seed<N>/).


rule adapt:
    input:
        queries=adapt_queries,
        gallery=GALLERY,
        model=MODEL_DIR,
        # stage tune, one job per method (a "not tuned" file when tuning is off or the method is
        # not in tune.methods): a changed entry of one method reruns its own tune and adapt jobs only
        tuned=qc.TUNED.format(dataset=DS, model=MODEL, method="{method}"),
    output:
        qc.RESULT.format(dataset=DS, model=MODEL, direction="{direction}", method="{method}",
                         corruption="{corruption}", severity="{severity}", seed="{seed}"),
        # per-query outcomes (qshift.outcomes), written before the results file
        qc.OUTCOMES.format(dataset=DS, model=MODEL, direction="{direction}", method="{method}",
                           corruption="{corruption}", severity="{severity}", seed="{seed}"),
    params:
        cfg=adapt_params,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,  # one GPU per job under SLURM (--gpus=1); ignored by local runs
        gpu_model="",  # "" = any GPU; sites pin a model in slurm/config.yaml
    # short jobs: `--group-components adapt=N` (slurm/config.yaml) bundles N per SLURM job
    group:
        "adapt"
    benchmark: f"logs/benchmarks/adapt/{DS}/{MODEL}/{{direction}}/{{method}}/seed{{seed}}/{{corruption}}-s{{severity}}.tsv"
    log:
        qc.LOGS["adapt"].format(dataset=DS, model=MODEL, direction="{direction}", method="{method}",
                       corruption="{corruption}", severity="{severity}", seed="{seed}"),
    conda:
        ENV_FILE
    shell:
        "python stages/adapt.py --method {wildcards.method} --direction {wildcards.direction}"
        " --corruption {wildcards.corruption} --severity {wildcards.severity} --seed {wildcards.seed}"


# Hyperparameter selection on the validation split (src/qshift/tune.py): one job, every grid point.
rule tune:
    input:
        DATASET_DIR,
        MODEL_DIR,
    output:
        qc.TUNED.format(dataset=DS, model=MODEL, method="{method}"),
    params:
        cfg=lambda w: stable_hash([config["seed"], config["amp"], config["adapt"], config.get("tune"),
                                   _method_entry(w.method)]),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=1,
        gpu_model="",
    log:
        qc.LOGS["tune"].format(dataset=DS, model=MODEL, method="{method}"),
    conda:
        ENV_FILE
    shell:
        "python stages/tune.py --method {wildcards.method}"
