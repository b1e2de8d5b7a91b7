# The video-audio task (benchmark builtin-va; src/qshift/va.py): corrupted video / audio query
# sets and streams, as clip sets. Defined only when the grid is a video-audio one, so other
# pipelines parse exactly as before. Its adapt jobs are the generic adapt rules (rules/adapt.smk:
# adapt_v2a / adapt_a2v, or adapt_v2a_<method> / adapt_a2v_<method> under adapt_jobs: method); prepare, pretrain,
# encode_gallery, examples and report are the shared rules (the stages ask the task's hooks).

from qshift import tasks as qtasks

if qtasks.cfg_task(config).name == "video-audio":
    from qshift import va as qva

    rule corrupt_video:
        input:
            DATASET_DIR,
        output:
            directory(qva.VIDEO_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}")),
        params:
            cfg=qpipe.param_hash(config, "corrupt_video"),
        threads: 1
        resources:
            **qpipe.resources("corrupt_video"),
        benchmark: f"logs/benchmarks/corrupt_video/{DS}/{{corruption}}-s{{severity}}.tsv"
        log:
            qc.LOGS["corrupt_video"].format(dataset=DS, corruption="{corruption}", severity="{severity}"),
        conda:
            ENV_FILE
        shell:
            "python stages/corrupt_va.py --side video --corruption {wildcards.corruption} --severity {wildcards.severity}"

    rule corrupt_audio:
        input:
            DATASET_DIR,
        output:
            directory(qva.AUDIO_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}")),
        params:
            cfg=qpipe.param_hash(config, "corrupt_audio"),
        threads: 1
        resources:
            **qpipe.resources("corrupt_audio"),
        benchmark: f"logs/benchmarks/corrupt_audio/{DS}/{{corruption}}-s{{severity}}.tsv"
        log:
            qc.LOGS["corrupt_audio"].format(dataset=DS, corruption="{corruption}", severity="{severity}"),
        conda:
            ENV_FILE
        shell:
            "python stages/corrupt_va.py --side audio --corruption {wildcards.corruption} --severity {wildcards.severity}"

    rule corrupt_stream_video:
        input:
            DATASET_DIR,
        output:
            directory(qva.STREAM_QUERIES.format(dataset=DS, side="video", stream="{stream}")),
        params:
            cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_video", stream=w.stream),
        threads: 1
        resources:
            **qpipe.resources("corrupt_stream_video"),
        benchmark: f"logs/benchmarks/corrupt_stream/{DS}/video/{{stream}}.tsv"
        log:
            qc.LOGS["corrupt_stream"].format(dataset=DS, side="video", stream="{stream}"),
        conda:
            ENV_FILE
        shell:
            "python stages/corrupt_va.py --side video --stream {wildcards.stream}"

    rule corrupt_stream_audio:
        input:
            DATASET_DIR,
        output:
            directory(qva.STREAM_QUERIES.format(dataset=DS, side="audio", stream="{stream}")),
        params:
            cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_audio", stream=w.stream),
        threads: 1
        resources:
            **qpipe.resources("corrupt_stream_audio"),
        benchmark: f"logs/benchmarks/corrupt_stream/{DS}/audio/{{stream}}.tsv"
        log:
            qc.LOGS["corrupt_stream"].format(dataset=DS, side="audio", stream="{stream}"),
        conda:
            ENV_FILE
        shell:
            "python stages/corrupt_va.py --side audio --stream {wildcards.stream}"
