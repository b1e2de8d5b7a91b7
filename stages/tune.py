"""Stage `tune`: choose each method's lr (and tau for entropy methods) on the VALIDATION split
under validation-only corruptions (params `tune`, src/qshift/tune.py).

One job per method of adapt.methods (``--method M``), so a changed entry of one method reruns
its tune job and its adapt jobs only. Reads the dataset manifest (validation images and
captions only) and the source model; never the test split, its gallery embeddings or the
reported corruptions' query sets. Writes results/<benchmark>/<model>/tuned/<method>.json (the
best setting per direction, and the method's tuning table), which that method's adapt jobs
read. A method that is not tuned (`tune.enabled: false` - the paper presets -, or not in
`tune.methods`) gets a file saying so (no model is loaded) and runs the params' values.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, TUNED
    from qshift.io import write_json
    from qshift.runtime import pick_device
    from qshift.errors import UnknownNameError
    from qshift.tune import run_tune, tunes, validate_tune

    p = cli.parser(__doc__)
    p.add_argument("--method", required=True, help="a method (or variant) of adapt.methods")
    args = p.parse_args()
    cfg = cli.load(args)
    validate_tune(cfg)
    if args.method not in cfg["adapt"]["methods"]:
        raise UnknownNameError("method of adapt.methods", args.method, cfg["adapt"]["methods"])
    where = {"dataset": cfg["benchmark"], "model": cfg["model"]["name"], "method": args.method}
    out = TUNED.format(**where)
    log = cli.start_log(LOGS["tune"].format(**where))
    model = None
    if tunes(cfg, args.method):
        from qshift.gallery import query_job_settings
        from qshift.models import load_model

        query_job_settings(cfg)  # threads; every grid point reads the same validation images
        model = load_model(cfg["model"]["source"], pick_device(cfg["device"]), cfg["model"].get("cache_dir"))
        from qshift.tasks import cfg_task, hook

        job_model = hook(cfg_task(cfg).name, "job_model")  # cir: the composed encoder over the loaded towers
        if job_model is not None:
            model = job_model(cfg, model)
    doc = run_tune(cfg, model, MANIFEST.format(dataset=cfg["benchmark"]), log=log, progress=cli.progress_enabled(args),
                   only=[args.method])
    doc["method"] = args.method
    if model is not None:
        from qshift.gallery import QUERY_IMAGES

        if line := QUERY_IMAGES.summary():
            log.info(f"tune: {line}")
    write_json(out, doc)
    log.info(f"tune: {out}: " + ("not tuned (params' hyperparameters)" if not doc["table"] else
             f"{len(doc['table'])} settings in {doc['seconds']:.1f}s; best " +
             "; ".join(f"{m} {d} {({k: v for k, v in b.items() if k not in ('mean_r1', 'default_r1')})}"
                       for m, per in doc["best"].items() for d, b in per.items())))


if __name__ == "__main__":
    cli.run(main)
