"""Stage `adapt`: one (method, direction, corruption, severity, seed) over the online query stream.

Reads the cached gallery embeddings and the run's query manifest, adapts the query tower
batch by batch, writes results/<dataset>/<model>/<direction>/<method>/seed<seed>/<corruption>-s<severity>.json
(R@1/5/10, the per-batch online curve, method statistics), then logs the run to MLflow.
A run whose scores or adapted parameters go non-finite is recorded as ``status: diverged``
(no R@K; MLflow marks it FAILED) and the stage still exits 0 with a WARNING: it is a
finished result, listed by the report under failures.
``--corruption clean --severity 0`` is the clean-query reference run; ``--corruption <stream>
--severity 0`` runs one of the direction's multi-domain streams (params ``streams``).
"""

from qshift import cli


def main() -> None:
    import time

    from qshift.adapt import run_stream
    from qshift.config import (GALLERY, LOGS, TUNED, Run, check_method, experiment_name, is_variant,
                               probes_angle, queries_path, run_seeds, streams)
    from qshift.tta.base import PROBE_KEY
    from qshift.corrupt import IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS
    from qshift.data.manifest import load_split
    from qshift.errors import ConfigError, UnknownNameError
    from qshift.gallery import load_gallery
    from qshift.io import stable_hash, write_json
    from qshift.models import load_model
    from qshift.outcomes import empty_outcomes, write_outcomes
    from qshift.stats import check_and_interval
    from qshift.tune import tuned_hparams
    from qshift.results import CLEAN, DIRECTIONS, SCHEMA, run_key
    from qshift.runtime import pick_device, provenance, set_threads
    from qshift.tracking import log_result, sweep_of, tracking_uri

    p = cli.parser(__doc__)
    p.add_argument("--method", required=True)
    p.add_argument("--direction", required=True)
    p.add_argument("--corruption", required=True, help=f"a corruption name, a stream name, or {CLEAN!r}")
    p.add_argument("--severity", required=True, type=int)
    p.add_argument("--seed", type=int, default=None,
                   help="the adaptation seed, one of params seeds (default: the first)")
    args = p.parse_args()
    cfg = cli.load(args)
    seeds = run_seeds(cfg)
    seed = seeds[0] if args.seed is None else args.seed
    if seed not in seeds:
        raise ConfigError(f"--seed {seed} is not one of params seeds {seeds} (add it to seeds to run it: "
                          f"its results then sit beside the others)")

    base = check_method(cfg, args.method)  # a variant (methods.<name>.method) builds its base
    if args.direction not in DIRECTIONS:
        raise UnknownNameError("direction", args.direction, DIRECTIONS)
    registry = IMAGE_CORRUPTIONS if args.direction == "i2t" else TEXT_CORRUPTIONS
    named = streams(cfg, args.direction)
    if args.corruption in named or args.corruption == CLEAN:
        if args.severity != 0:
            what = "the clean reference run" if args.corruption == CLEAN else f"stream {args.corruption!r}"
            raise ConfigError(f"{what} takes --severity 0, got {args.severity}")
    elif args.corruption not in registry:
        raise UnknownNameError(f"{registry.kind} or stream for {args.direction} queries", args.corruption,
                               registry.names() + [CLEAN] + sorted(named))

    run = Run(cfg["benchmark"], cfg["model"]["name"], args.direction, args.method, args.corruption, args.severity,
              seed)
    log = cli.start_log(LOGS["adapt"].format(**run.key))
    set_threads(cfg.get("threads", 0))
    device = pick_device(cfg["device"])
    queries = load_split(queries_path(cfg, args.direction, args.corruption, args.severity, seed), "test")
    gallery = load_gallery(GALLERY.format(model=run.model, dataset=run.dataset))
    model = load_model(cfg["model"]["source"], device, cfg["model"].get("cache_dir"),
                       preprocess=cfg["model"].get("preprocess", "native"))
    if gallery["model"] != model.name:
        raise ConfigError(f"gallery embeddings were made with model {gallery['model']!r}, not {model.name!r}; "
                          f"rerun encode_gallery")
    if gallery.get("preprocess", "native") != model.preprocess:
        raise ConfigError(f"gallery embeddings were made with model.preprocess {gallery.get('preprocess', 'native')!r}, "
                          f"not {model.preprocess!r}; rerun encode_gallery")

    hparams, tuned = tuned_hparams(cfg, args.method, args.direction, TUNED.format(**run.key))  # stage tune
    ad = cfg["adapt"]
    if probes_angle(cfg, args.method):  # an observation (params observe.grad_angle), not a hyperparameter
        hparams[PROBE_KEY] = True
    if tuned:
        log.info(f"adapt: tuned on the validation split (stage tune): {tuned}")
    body = run_stream(model, base, hparams, args.direction, queries, gallery, batch_size=ad["batch_size"],
                      steps=ad["steps"], seed=seed, num_workers=cfg["num_workers"], amp=cfg["amp"],
                      progress=cli.progress_enabled(args), desc=run_key(run.key), order_kind=ad.get("order", "seeded"))
    outcomes = body.pop("outcomes", None)  # none for a diverged run (no ranks to keep)
    run_cfg = {"batch_size": ad["batch_size"], "steps": ad["steps"], "seed": seed, "amp": cfg["amp"],
               "model_source": cfg["model"]["source"]}
    if ad.get("order", "seeded") != "seeded":  # recorded only when not the default (params_hash unchanged)
        run_cfg["order"] = ad["order"]
    if is_variant(cfg, args.method):
        log.info(f"adapt: {args.method} is a variant of {base}: {body['hparams']}")
    if tuned:
        run_cfg["tuned"] = tuned
    result = {"schema": SCHEMA, "key": run.key, "run_key": run_key(run.key), **body, "run": run_cfg,
              **({"variant_of": base} if base != args.method else {}),
              "env": {**provenance(device), "params_hash": stable_hash({"hparams": body["hparams"], **run_cfg})},
              "finished_at": time.time(),
              "mlflow": {"logged": False, "run_id": None, "error": "not attempted yet"}}
    out = run.result_path
    if outcomes is not None:
        result["metrics_ci"] = check_and_interval(outcomes, result["metrics"], cfg["seed"], run.key)
    write_outcomes(run.outcomes_path, outcomes if outcomes is not None else empty_outcomes())  # before the JSON
    write_json(out, result)  # the numbers are safe before tracking is attempted
    result["mlflow"] = log_result(result, tracking_uri(cfg), experiment_name(cfg), artifact=out,
                                  sweep=sweep_of(cfg))
    write_json(out, result)
    if result["mlflow"].get("replaced"):
        log.info(f"adapt: {result['run_key']}: hyperparameters changed, replaced MLflow run "
                 f"{result['mlflow']['replaced']['run_id']} ({result['mlflow']['replaced']['changed']})")
    tracked = "ok" if result["mlflow"]["logged"] else f"NOT logged: {result['mlflow']['error']}"
    if result["status"] == "diverged":
        d = result["diverged"]
        log.warning(f"adapt: {result['run_key']}: DIVERGED at batch {d['batch']} ({d['reason']}, "
                    f"{d['queries_seen']} queries seen); no R@K reported ({body['timing']['seconds']:.1f}s, "
                    f"mlflow {tracked})")
        return
    m = result["metrics"]
    log.info(f"adapt: {result['run_key']}: R@1 {m['R@1']:.2f} R@5 {m['R@5']:.2f} R@10 {m['R@10']:.2f} "
          f"({body['timing']['seconds']:.1f}s, mlflow {tracked})")


if __name__ == "__main__":
    cli.run(main)
