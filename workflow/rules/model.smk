# The source model (trained here for the built-in benchmark) and its gallery embeddings.


if qc.trains_model(config):

    rule pretrain:
        input:
            DATASET_DIR,
        output:
            directory(MODEL_DIR),
            "reports/pretrain.json",
        params:
            cfg=qpipe.param_hash(config, "pretrain"),
        threads: 2
        resources:
            **qpipe.resources("pretrain"),  # cpus_per_task: SLURM CPUs (the profile caps threads at its `cores`)
        benchmark: f"logs/benchmarks/pretrain/{MODEL}.tsv"
        log:
            qc.LOGS["pretrain"].format(model=MODEL),
        conda:
            ENV_FILE
        shell:
            "python stages/pretrain.py"

else:

    # A pretrained source is fetched, not trained: the job depends on the model keys only
    # (not on the benchmark), so benchmarks sharing a model share it without rerunning.
    rule pretrain:
        output:
            directory(MODEL_DIR),
        params:
            model=qc.model_overrides(config),
        threads: 1
        resources:
            **qpipe.FETCH_RESOURCES,
        benchmark: f"logs/benchmarks/pretrain/{MODEL}.tsv"
        log:
            qc.LOGS["pretrain"].format(model=MODEL),
        conda:
            ENV_FILE
        shell:
            "python stages/pretrain.py{params.model}"


rule encode_gallery:
    input:
        DATASET_DIR,
        MODEL_DIR,
    output:
        GALLERY,
    params:
        cfg=qpipe.param_hash(config, "encode_gallery"),
    threads: 1
    resources:
        **qpipe.resources("encode_gallery"),
    benchmark: f"logs/benchmarks/encode_gallery/{MODEL}/{DS}.tsv"
    log:
        qc.LOGS["encode_gallery"].format(model=MODEL, dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/encode_gallery.py"
