# Data: the benchmark's images + manifest, and the corrupted query sets (queries only).
# `params.cfg` is a hash of the parameters a rule reads, so changing them reruns the rule.


rule prepare:
    output:
        directory(DATASET_DIR),
    params:
        overrides=OVERRIDES,
        cfg=stable_hash([config["seed"], config["datasets"][DS]]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    log:
        qc.LOGS["prepare"].format(dataset=DS),
    conda:
        ENV_FILE
    shell:
        "python stages/prepare.py{params.overrides}"


rule corrupt_images:
    input:
        DATASET_DIR,
    output:
        directory(qc.IMAGE_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}")),
    params:
        overrides=OVERRIDES,
        cfg=stable_hash([config["seed"], config["corrupt"]["image"]["jpeg_quality"]]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    log:
        qc.LOGS["corrupt_images"].format(dataset=DS, corruption="{corruption}", severity="{severity}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_images.py --corruption {wildcards.corruption} --severity {wildcards.severity}{params.overrides}"


rule corrupt_text:
    input:
        DATASET_DIR,
    output:
        qc.TEXT_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}"),
    params:
        overrides=OVERRIDES,
        cfg=stable_hash(config["seed"]),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        qc.LOGS["corrupt_text"].format(dataset=DS, corruption="{corruption}", severity="{severity}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_text.py --corruption {wildcards.corruption} --level {wildcards.severity}{params.overrides}"


# Multi-domain query streams (params `streams`): one job per stream, from the dataset alone.
rule corrupt_stream_image:
    input:
        DATASET_DIR,
    output:
        directory(qc.STREAM_IMAGE_QUERIES.format(dataset=DS, stream="{stream}")),
    params:
        overrides=OVERRIDES,
        cfg=lambda w: stream_params(w, "image"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=60,
    log:
        qc.LOGS["corrupt_stream"].format(dataset=DS, side="image", stream="{stream}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_stream.py --direction i2t --stream {wildcards.stream}{params.overrides}"


rule corrupt_stream_text:
    input:
        DATASET_DIR,
    output:
        qc.STREAM_TEXT_QUERIES.format(dataset=DS, stream="{stream}"),
    params:
        overrides=OVERRIDES,
        cfg=lambda w: stream_params(w, "text"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        qc.LOGS["corrupt_stream"].format(dataset=DS, side="text", stream="{stream}"),
    conda:
        ENV_FILE
    shell:
        "python stages/corrupt_stream.py --direction t2i --stream {wildcards.stream}{params.overrides}"
