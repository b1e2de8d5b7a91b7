# The video-audio task (benchmark builtin-va; src/qshift/va.py): corrupted video / audio query
# sets and streams, as clip sets. Defined only when the grid is a video-audio one, so other
# pipelines parse exactly as before. Its adapt jobs are the generic adapt rules (rules/adapt.smk:
# adapt_v2a / adapt_a2v, or adapt_v2a_<method> / adapt_a2v_<method> under adapt_jobs: method); prepare, pretrain,
# encode_gallery, examples and report are the shared rules (the stages ask the task's hooks).

from qshift import tasks as qtasks

if qtasks.cfg_task(config).name == "video-audio":

    rule corrupt_video:
        input:
            DATASET_DIR,
        output:
            directory(qc.VIDEO_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}")),
        params:
            draw="",  # the _drawn variant: --draw-seed N
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
            "python stages/corrupt_va.py --side video --corruption {wildcards.corruption} --severity {wildcards.severity}{params.draw}"

    rule corrupt_audio:
        input:
            DATASET_DIR,
        output:
            directory(qc.AUDIO_QUERIES.format(dataset=DS, corruption="{corruption}", severity="{severity}")),
        params:
            draw="",  # the _drawn variant: --draw-seed N
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
            "python stages/corrupt_va.py --side audio --corruption {wildcards.corruption} --severity {wildcards.severity}{params.draw}"

    rule corrupt_stream_video:
        input:
            DATASET_DIR,
        output:
            directory(qc.VA_STREAM_QUERIES.format(dataset=DS, side="video", stream="{stream}")),
        params:
            draw="",  # the _drawn variant: --draw-seed N
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
            "python stages/corrupt_va.py --side video --stream {wildcards.stream}{params.draw}"

    rule corrupt_stream_audio:
        input:
            DATASET_DIR,
        output:
            directory(qc.VA_STREAM_QUERIES.format(dataset=DS, side="audio", stream="{stream}")),
        params:
            draw="",  # the _drawn variant: --draw-seed N
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
            "python stages/corrupt_va.py --side audio --stream {wildcards.stream}{params.draw}"

    # `seed_corruptions: true`: the same query sets drawn for each run seed but the project's
    # (src/qshift/config.py DRAWN), read by that seed's adapt jobs; the stream domains stay the project seed's
    use rule corrupt_video as corrupt_video_drawn with:
        output:
            directory(qc.DRAWN["video"].format(dataset=DS, draw="{draw}", corruption="{corruption}",
                                                severity="{severity}")),
        params:
            draw=lambda w: f" --draw-seed {w.draw}",
            cfg=qpipe.param_hash(config, "corrupt_video"),
        benchmark: f"logs/benchmarks/corrupt_video/{DS}/seed{{draw}}/{{corruption}}-s{{severity}}.tsv"
        log:
            qc.LOGS["corrupt_video_drawn"].format(dataset=DS, draw="{draw}", corruption="{corruption}",
                                                  severity="{severity}"),

    use rule corrupt_audio as corrupt_audio_drawn with:
        output:
            directory(qc.DRAWN["audio"].format(dataset=DS, draw="{draw}", corruption="{corruption}",
                                                severity="{severity}")),
        params:
            draw=lambda w: f" --draw-seed {w.draw}",
            cfg=qpipe.param_hash(config, "corrupt_audio"),
        benchmark: f"logs/benchmarks/corrupt_audio/{DS}/seed{{draw}}/{{corruption}}-s{{severity}}.tsv"
        log:
            qc.LOGS["corrupt_audio_drawn"].format(dataset=DS, draw="{draw}", corruption="{corruption}",
                                                  severity="{severity}"),

    use rule corrupt_stream_video as corrupt_stream_video_drawn with:
        output:
            directory(qc.DRAWN["va-stream"].format(dataset=DS, side="video", draw="{draw}", stream="{stream}")),
        params:
            draw=lambda w: f" --draw-seed {w.draw}",
            cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_video", stream=w.stream),
        benchmark: f"logs/benchmarks/corrupt_stream/{DS}/video/seed{{draw}}/{{stream}}.tsv"
        log:
            qc.LOGS["corrupt_stream_drawn"].format(dataset=DS, side="video", draw="{draw}", stream="{stream}"),

    use rule corrupt_stream_audio as corrupt_stream_audio_drawn with:
        output:
            directory(qc.DRAWN["va-stream"].format(dataset=DS, side="audio", draw="{draw}", stream="{stream}")),
        params:
            draw=lambda w: f" --draw-seed {w.draw}",
            cfg=lambda w: qpipe.param_hash(config, "corrupt_stream_audio", stream=w.stream),
        benchmark: f"logs/benchmarks/corrupt_stream/{DS}/audio/seed{{draw}}/{{stream}}.tsv"
        log:
            qc.LOGS["corrupt_stream_drawn"].format(dataset=DS, side="audio", draw="{draw}", stream="{stream}"),
