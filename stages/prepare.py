"""Stage `prepare`: the benchmark's data in the manifest format.

Built-in benchmark: procedurally rendered scenes with 5 captions each, from the seed, on a
process pool of the job's CPUs (Snakemake's `threads`; the same bytes whatever the count).
Built-in video-audio benchmark (``task: video-audio``): generated clips (frames + soundtrack),
one clip set per split (src/qshift/data/builtin_va.py).
Built-in CIR benchmark (``task: cir``): captioned training scenes + (reference, modification, target)
triplets and their target gallery (src/qshift/data/builtin_cir.py).
Downloaded benchmarks (COCO, Flickr30k, NoCaps, Fashion-Gen, CUHK-/ICFG-PEDES, remote sensing): the download stage's data/raw/<benchmark>/ turned
into the same format (test split, captions normalised when read).
Output: data/<benchmark>/ (images/ + manifest.json).
"""

from qshift import cli


def main() -> None:
    from qshift.config import DATASET_DIR, LOGS, RAW_DIR, dataset_params
    from qshift.data.karpathy import dataset_kind, prepare_real
    from qshift.presets import dataset_name

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    bench = cfg["benchmark"]
    d = dataset_params(cfg)
    log = cli.start_log(LOGS["prepare"].format(dataset=bench))
    from qshift.tasks import dataset_task, hook

    task_prepare = hook(dataset_task(cfg), "prepare")  # video-audio: the built-in clips (qshift.va)
    if task_prepare is not None:
        stats = task_prepare(cfg, DATASET_DIR.format(dataset=bench), progress=cli.progress_enabled(args))
    elif dataset_kind(d) == "builtin" and d.get("task") == "cir":  # composed image retrieval triplets
        from qshift.data.builtin_cir import generate_builtin_cir

        stats = generate_builtin_cir(DATASET_DIR.format(dataset=bench), n_train=d["n_train"], n_restval=d["n_restval"],
                                     n_val=d["n_val"], n_test=d["n_test"], image_size=d["image_size"],
                                     seed=cfg["seed"], progress=cli.progress_enabled(args))
    elif dataset_kind(d) == "builtin":
        from qshift.data.builtin import generate_builtin

        from qshift.runtime import job_cpus

        stats = generate_builtin(DATASET_DIR.format(dataset=bench), n_train=d["n_train"], n_val=d["n_val"],
                                 n_test=d["n_test"], image_size=d["image_size"], seed=cfg["seed"],
                                 progress=cli.progress_enabled(args), workers=job_cpus())
    else:
        stats = prepare_real(dataset_name(cfg), d, RAW_DIR.format(dataset=bench), DATASET_DIR.format(dataset=bench),
                             progress=cli.progress_enabled(args))
    log.info("prepare: %s", stats)


if __name__ == "__main__":
    cli.run(main)
