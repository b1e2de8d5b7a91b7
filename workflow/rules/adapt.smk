# Online test-time adaptation. `adapt_jobs` (params.yaml) sets the job granularity:
# - direction (the default): one job per (direction, seed), rule adapt_<direction>, running every
#   method's cells in one process — imports, model and gallery loaded once (a 2-core laptop runs
#   the two directions side by side);
# - method: one job per (method, direction, seed), rule adapt_<direction>_<method> (a cluster runs
#   them as parallel GPU jobs; the slurm profile sets it).
# The seed is the rules' wildcard. A job runs its cells (clean, every corruption x severity, the
# direction's streams) one after another; every cell is its own results file, written as it finishes.
# The outputs are update()-flagged: Snakemake keeps the job's existing results files when it
# reruns the job, and the stage skips the cells that are up to date (qshift.cells: same
# fingerprint), so deleting one results file or adding one severity runs just those cells. What
# the coarser granularity costs: a changed method hyperparameter reruns the direction's job, which
# then runs only that method's cells and skips the others' (a few seconds of start-up and checks).
# `seeds` in params.yaml lists the adaptation seeds (each its own results folder seed<N>/).


def _site_resources(name):
    """The profile's `set-resources: adapt:` block (e.g. the GPU model) applies to every adapt rule:
    Snakemake looks set-resources up by rule name, so the block is entered under this rule's name."""
    # (Snakemake 9 reads the parsed block, by rule name, when it creates a rule)
    site = getattr(workflow.resource_settings, "_parsed_overwrite_resources", None)
    if site is not None and "adapt" in site and name not in site:
        site[name] = site["adapt"]


def _adapt_rule(methods, direction):
    seed = qc.primary_seed(config)
    cells = [r for m in methods for r in qcells.job_cells(config, m, direction, seed)]
    methods = [m for m in methods if any(r.method == m for r in cells)]  # those with cells here
    if not cells:
        return
    outputs = [update(p) for r in cells for p in (
        qc.RESULT.format(**{**r.key, "seed": "{seed}"}),
        qc.OUTCOMES.format(**{**r.key, "seed": "{seed}"}))]  # per-query outcomes, written before the JSON
    name = f"adapt_{direction}_{methods[0]}" if config.get("adapt_jobs", "method") == "method" else f"adapt_{direction}"
    log_file = qc.adapt_job_log(DS, MODEL, direction, methods, "{seed}")  # the one the stage writes
    # its benchmark file beside it, below logs/benchmarks/ (benchmarks/pipeline_cost.py pairs them)
    bench = "logs/benchmarks/" + log_file.removeprefix("logs/").removesuffix(".log") + ".tsv"
    _site_resources(name)

    rule:
        name:
            name
        input:
            queries=adapt_job_queries(cells),
            gallery=GALLERY,
            model=MODEL_DIR,
            # stage tune, one job per method (a "not tuned" file when tuning is off or the method is
            # not in tune.methods): a changed entry of one method reruns its own tune job, then the
            # adapt job(s) holding its cells
            tuned=[qc.TUNED.format(dataset=DS, model=MODEL, method=m) for m in methods],
        output:
            outputs,
        params:
            # what every cell reads from the params, per method (the cells themselves are the outputs)
            cfg=" ".join(qpipe.param_hash(config, f"adapt_{direction}", method=m) for m in methods),
        threads: 1
        resources:
            # slurm/config.yaml's `set-resources: adapt:` block (e.g. gpu_model) applies to every adapt rule;
            # the stage table's runtime is one method's cells: a job of several methods gets it per method
            **qpipe.adapt_resources(direction, len(methods)),
        benchmark:
            bench
        log:
            log_file,
        conda:
            ENV_FILE
        shell:
            f"python stages/adapt.py --method {','.join(methods)} --direction {direction} --seed {{wildcards.seed}}"


for _direction in config["adapt"]["directions"]:
    for _methods in qc.adapt_job_methods(config):
        _adapt_rule(_methods, _direction)


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
    # longest grid first, so no long job is left to run alone at the end (qshift.pipeline.tune_priority)
    priority: lambda w: qpipe.tune_priority(config, w.method)
    resources:
        **qpipe.resources("tune"),
    benchmark: f"logs/benchmarks/tune/{DS}/{MODEL}/{{method}}.tsv"
    log:
        qc.LOGS["tune"].format(dataset=DS, model=MODEL, method="{method}"),
    conda:
        ENV_FILE
    shell:
        "python stages/tune.py --method {wildcards.method}"
