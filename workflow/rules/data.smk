# Data: the benchmark's images + manifest, and the corrupted query sets (queries only).
# `params.cfg` is a hash of the parameters a rule reads (the stage table's, qshift.pipeline), so
# changing them reruns the rule.


rule download:
    output:
        directory(RAW_DIR),
    params:
        # download.* (mirror, retries) changes how, not what: it does not rerun the download
        cfg=qpipe.param_hash(config, "download"),
    threads: 1
    resources:
        **qpipe.resources("download"),
    benchmark: f"logs/benchmarks/download/{DS}.tsv"
    log:
        qc.LOGS["download"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/download.py"


rule prepare:
    input:
        RAW_DIR,
    output:
        directory(DATASET_DIR),
    params:
        cfg=qpipe.param_hash(config, "prepare"),
    threads: 2  # the built-in benchmark renders on a pool of the job's threads (OMP_NUM_THREADS)
    resources:
        **qpipe.resources("prepare"),
    benchmark: f"logs/benchmarks/prepare/{DS}.tsv"
    log:
        qc.LOGS["prepare"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/prepare.py"


rule corrupt_images:
    input:
        DATASET_DIR,
    output:
        directory(qc.IMAGE_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}")),
    params:
        cfg=qpipe.param_hash(config, "corrupt_images"),
        draw="",  # corrupt_images_drawn: --draw-seed N
    # a process pool of corrupt.image.workers inside the job (0 = every core it is given)
    threads: config["corrupt"]["image"]["workers"] or workflow.cores
    resources:
        **qpipe.resources("corrupt_images"),
    benchmark: f"logs/benchmarks/corrupt_images/{DS}/{{corruption}}-s{{severity}}.tsv"
    log:
        qc.LOGS["corrupt_images"].format(dataset=DS, corruption="{corruption}", severity="{severity}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_images.py --corruption {wildcards.corruption} --severity {wildcards.severity}{params.draw}"


rule corrupt_text:
    input:
        DATASET_DIR,
    output:
        qc.TEXT_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}"),
    params:
        cfg=qpipe.param_hash(config, "corrupt_text"),
        draw="",
    threads: 1
    resources:
        **qpipe.resources("corrupt_text"),
    benchmark: f"logs/benchmarks/corrupt_text/{DS}/{{corruption}}-s{{severity}}.tsv"
    log:
        qc.LOGS["corrupt_text"].format(dataset=DS, corruption="{corruption}", severity="{severity}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_text.py --corruption {wildcards.corruption} --level {wildcards.severity}{params.draw}"


# Multi-domain query streams (params `streams`): one job per stream, from the dataset alone.
rule corrupt_stream_image:
    input:
        DATASET_DIR,
    output:
        directory(qc.STREAM_IMAGE_QUERIES.format(dataset=DS, stream="{stream}")),
    params:
        cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_image", stream=w.stream),
        draw="",
    threads: 1
    resources:
        **qpipe.resources("corrupt_stream_image"),
    benchmark: f"logs/benchmarks/corrupt_stream/{DS}/image/{{stream}}.tsv"
    log:
        qc.LOGS["corrupt_stream"].format(dataset=DS, side="image", stream="{stream}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_stream.py --direction i2t --stream {wildcards.stream}{params.draw}"


rule corrupt_stream_text:
    input:
        DATASET_DIR,
    output:
        qc.STREAM_TEXT_QUERIES.format(dataset=DS, stream="{stream}"),
    params:
        cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_text", stream=w.stream),
        draw="",
    threads: 1
    resources:
        **qpipe.resources("corrupt_stream_text"),
    benchmark: f"logs/benchmarks/corrupt_stream/{DS}/text/{{stream}}.tsv"
    log:
        qc.LOGS["corrupt_stream"].format(dataset=DS, side="text", stream="{stream}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_stream.py --direction t2i --stream {wildcards.stream}{params.draw}"


# A composed query stream (params `streams.cir`, benchmark builtin-cir; qshift.cir_streams, a
# RECONSTRUCTION of REST's multi-modal query shift): each triplet's reference image or modification
# text corrupted by its domain, from the dataset alone.
rule corrupt_stream_cir:
    input:
        DATASET_DIR,
    output:
        directory(qc.STREAM_CIR_QUERIES.format(dataset=DS, stream="{stream}")),
    params:
        cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_cir", stream=w.stream),
        draw="",  # corrupt_stream_cir_drawn: --draw-seed N
    threads: 1
    resources:
        **qpipe.resources("corrupt_stream_cir"),
    benchmark: f"logs/benchmarks/corrupt_stream/{DS}/cir/{{stream}}.tsv"
    log:
        qc.LOGS["corrupt_stream"].format(dataset=DS, side="cir", stream="{stream}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_stream.py --direction cir --stream {wildcards.stream}{params.draw}"


# `seed_corruptions: true`: the same query sets drawn for each run seed but the project's
# (qshift.config.DRAWN, <kind>-seed<N>/), pulled in only by that seed's adapt jobs.
use rule corrupt_images as corrupt_images_drawn with:
    output:
        directory(qc.DRAWN["image"].format(dataset=DS, draw="{draw}", corruption="{corruption}", severity="{severity}")),
    params:
        cfg=rules.corrupt_images.params.cfg,
        draw=lambda w: f" --draw-seed {w.draw}",
    benchmark: f"logs/benchmarks/corrupt_images/{DS}/seed{{draw}}/{{corruption}}-s{{severity}}.tsv"
    log:
        qc.LOGS["corrupt_images_drawn"].format(dataset=DS, draw="{draw}", corruption="{corruption}",
                                               severity="{severity}"),


use rule corrupt_text as corrupt_text_drawn with:
    output:
        qc.DRAWN["text"].format(dataset=DS, draw="{draw}", corruption="{corruption}", severity="{severity}"),
    params:
        cfg=rules.corrupt_text.params.cfg,
        draw=lambda w: f" --draw-seed {w.draw}",
    benchmark: f"logs/benchmarks/corrupt_text/{DS}/seed{{draw}}/{{corruption}}-s{{severity}}.tsv"
    log:
        qc.LOGS["corrupt_text_drawn"].format(dataset=DS, draw="{draw}", corruption="{corruption}",
                                             severity="{severity}"),


use rule corrupt_stream_image as corrupt_stream_image_drawn with:
    output:
        directory(qc.DRAWN["image-stream"].format(dataset=DS, draw="{draw}", stream="{stream}")),
    params:
        cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_image", stream=w.stream),
        draw=lambda w: f" --draw-seed {w.draw}",
    benchmark: f"logs/benchmarks/corrupt_stream/{DS}/image/seed{{draw}}/{{stream}}.tsv"
    log:
        qc.LOGS["corrupt_stream_drawn"].format(dataset=DS, side="image", draw="{draw}", stream="{stream}"),


use rule corrupt_stream_text as corrupt_stream_text_drawn with:
    output:
        qc.DRAWN["text-stream"].format(dataset=DS, draw="{draw}", stream="{stream}"),
    params:
        cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_text", stream=w.stream),
        draw=lambda w: f" --draw-seed {w.draw}",
    benchmark: f"logs/benchmarks/corrupt_stream/{DS}/text/seed{{draw}}/{{stream}}.tsv"
    log:
        qc.LOGS["corrupt_stream_drawn"].format(dataset=DS, side="text", draw="{draw}", stream="{stream}"),


use rule corrupt_stream_cir as corrupt_stream_cir_drawn with:
    output:
        directory(qc.DRAWN["cir-stream"].format(dataset=DS, draw="{draw}", stream="{stream}")),
    params:
        cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_cir", stream=w.stream),
        draw=lambda w: f" --draw-seed {w.draw}",
    benchmark: f"logs/benchmarks/corrupt_stream/{DS}/cir/seed{{draw}}/{{stream}}.tsv"
    log:
        qc.LOGS["corrupt_stream_drawn"].format(dataset=DS, side="cir", draw="{draw}", stream="{stream}"),


# A corruption x severity contact sheet and a table of text corruptions by type and level.
rule examples:
    input:
        DATASET_DIR,
    output:
        f"{EXAMPLES_DIR}/contact_sheet.png",
        f"{EXAMPLES_DIR}/text_examples.md",
        f"{EXAMPLES_DIR}/examples.json",
    params:
        cfg=qpipe.param_hash(config, "examples"),
    threads: 1
    resources:
        **qpipe.resources("examples"),
    benchmark: f"logs/benchmarks/examples/{DS}.tsv"
    log:
        qc.LOGS["examples"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/examples.py --no-progress"
