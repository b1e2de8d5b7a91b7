"""Stage `tune`: choose each method's lr (and tau for entropy methods) on the VALIDATION split
under validation-only corruptions (params `tune`, src/qshift/tune.py).

Reads the dataset manifest (validation images and captions only) and the source model; never
the test split, its gallery embeddings or the reported corruptions' query sets. Writes
results/<benchmark>/<model>/tuned.json (the best setting per method and direction, and the
whole tuning table), which the adapt stage reads. With `tune.enabled: false` (the paper presets)
the file records that tuning is off and adapt runs the params' hyperparameters.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, TUNED
    from qshift.io import write_json
    from qshift.runtime import pick_device, set_threads
    from qshift.tune import enabled, run_tune, validate_tune

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    validate_tune(cfg)
    out = TUNED.format(dataset=cfg["benchmark"], model=cfg["model"]["name"])
    log = cli.start_log(LOGS["tune"].format(dataset=cfg["benchmark"], model=cfg["model"]["name"]))
    model = None
    if enabled(cfg):
        from qshift.models import load_model

        set_threads(cfg.get("threads", 0))
        model = load_model(cfg["model"]["source"], pick_device(cfg["device"]), cfg["model"].get("cache_dir"))
    doc = run_tune(cfg, model, MANIFEST.format(dataset=cfg["benchmark"]), log=log, progress=cli.progress_enabled(args))
    write_json(out, doc)
    log.info(f"tune: {out}: " + ("off (params' hyperparameters)" if not doc["enabled"] else
             f"{len(doc['table'])} settings in {doc['seconds']:.1f}s; best " +
             "; ".join(f"{m} {d} {({k: v for k, v in b.items() if k not in ('mean_r1', 'default_r1')})}"
                       for m, per in doc["best"].items() for d, b in per.items())))


if __name__ == "__main__":
    cli.run(main)
