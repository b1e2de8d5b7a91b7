# Online test-time adaptation: one job per (method, direction, seed) — a rule per (method,
# direction), named adapt_<direction>_<method>, with the seed as its wildcard. A job loads the
# model and gallery once and runs its cells (clean, every corruption x severity, the direction's
# streams) one after another; every cell is its own results file, written as it finishes.
# The outputs are update()-flagged: Snakemake keeps the job's existing results files when it
# reruns the job, and the stage skips the cells that are up to date (qshift.cells: same
# fingerprint), so deleting one results file or adding one severity runs just those cells.
# `seeds` in params.yaml lists the adaptation seeds (each its own results folder seed<N>/).


def _site_resources(name):
    """The profile's `set-resources: adapt:` block (e.g. the GPU model) applies to every adapt rule:
    Snakemake looks set-resources up by rule name, so the block is entered under this rule's name."""
    # (Snakemake 9 reads the parsed block, by rule name, when it creates a rule)
    site = getattr(workflow.resource_settings, "_parsed_overwrite_resources", None)
    if site is not None and "adapt" in site and name not in site:
        site[name] = site["adapt"]


def _adapt_rule(method, direction):
    cells = qcells.job_cells(config, method, direction, qc.primary_seed(config))
    if not cells:
        return
    outputs = [update(p) for r in cells for p in (
        qc.RESULT.format(**{**r.key, "seed": "{seed}"}),
        qc.OUTCOMES.format(**{**r.key, "seed": "{seed}"}))]  # per-query outcomes, written before the JSON
    job = dict(dataset=DS, model=MODEL, direction=direction, method=method)
    _site_resources(f"adapt_{direction}_{method}")

    rule:
        name:
            f"adapt_{direction}_{method}"
        input:
            queries=adapt_job_queries(cells),
            gallery=GALLERY,
            model=MODEL_DIR,
            # stage tune, one job per method (a "not tuned" file when tuning is off or the method is
            # not in tune.methods): a changed entry of one method reruns its own tune and adapt jobs only
            tuned=qc.TUNED.format(dataset=DS, model=MODEL, method=method),
        output:
            outputs,
        params:
            # what every cell reads from the params (the cells themselves are the rule's outputs)
            cfg=qpipe.param_hash(config, f"adapt_{direction}", method=method),
        threads: 1
        resources:
            # slurm/config.yaml's `set-resources: adapt:` block (e.g. gpu_model) applies to every adapt rule
            **qpipe.resources(f"adapt_{direction}"),
        benchmark:
            f"logs/benchmarks/adapt/{DS}/{MODEL}/{direction}/{method}/seed{{seed}}.tsv"
        log:
            qc.LOGS["adapt_job"].format(**job, seed="{seed}"),
        conda:
            ENV_FILE
        shell:
            f"python stages/adapt.py --method {method} --direction {direction} --seed {{wildcards.seed}}"


for _method in config["adapt"]["methods"]:
    for _direction in config["adapt"]["directions"]:
        _adapt_rule(_method, _direction)


# Hyperparameter selection on the validation split (src/qshift/tune.py): one job, every grid point.
rule tune:
    input:
        DATASET_DIR,
        MODEL_DIR,
    output:
        qc.TUNED.format(dataset=DS, model=MODEL, method="{method}"),
    params:
        cfg=lambda w: qpipe.param_hash(config, "tune", method=w.method),
    threads: 1
    resources:
        **qpipe.resources("tune"),
    log:
        qc.LOGS["tune"].format(dataset=DS, model=MODEL, method="{method}"),
    conda:
        ENV_FILE
    shell:
        "python stages/tune.py --method {wildcards.method}"
