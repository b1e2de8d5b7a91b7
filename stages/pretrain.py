"""Stage `pretrain`: provide the source model.

The built-in benchmark's model (``model.source: local-dir:models/<model.name>``) is trained
here: a tiny open_clip CLIP on the train split (a CIR benchmark: then its combiner, src/qshift/cir.py). Any other source (a pretrained open_clip or
transformers model) is fetched into ``model.cache_dir`` once — the stage then runs on the
submitting host, which has the internet that compute nodes often lack — loaded to check it
works, and recorded, so later jobs load it from the cache without network.
Output: models/<model.name>/ (the model, or model.json for a fetched one) and reports/pretrain.json.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, MODEL_DIR, trains_model
    from qshift.io import atomic_dir, write_json
    from qshift.runtime import pick_device, set_threads

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    name, source = cfg["model"]["name"], cfg["model"]["source"]
    log = cli.start_log(LOGS["pretrain"].format(model=name))
    set_threads(cfg.get("threads", 0))
    from qshift.tasks import cfg_task, hook

    task_pretrain = hook(cfg_task(cfg).name, "pretrain") if trains_model(cfg) else None
    if task_pretrain is not None:  # video-audio: the two-tower (src/qshift/models/tiny_va.py)
        device = pick_device(cfg["device"])
        metrics = task_pretrain(cfg, MODEL_DIR.format(model=name), device, progress=cli.progress_enabled(args))
        write_json("reports/pretrain.json", {"model": name, "device": str(device), "trained": True, **metrics})
        log.info("pretrain: %s", ", ".join(f"{k}={v}" for k, v in metrics.items()))
        return
    if trains_model(cfg):
        from qshift.models.train import pretrain

        from qshift.tasks import is_cir

        device = pick_device(cfg["device"])
        cir = is_cir(cfg)
        metrics = pretrain(MANIFEST.format(dataset=cfg["benchmark"]), MODEL_DIR.format(model=name), cfg["pretrain"],
                           seed=cfg["seed"], device=device, amp=cfg["amp"], progress=cli.progress_enabled(args),
                           eval_splits=() if cir else ("val", "test"))  # CIR's val/test hold triplets
        if cir:  # then the combiner over the frozen towers, saved into the same folder (qshift.cir)
            from qshift.cir import pretrain_combiner
            from qshift.config import DATASET_DIR

            metrics.update(pretrain_combiner(cfg, DATASET_DIR.format(dataset=cfg["benchmark"]),
                                             MODEL_DIR.format(model=name), device, cli.progress_enabled(args)))
        write_json("reports/pretrain.json", {"model": name, "device": str(device), "trained": True, **metrics})
        log.info("pretrain: %s", ", ".join(f"{k}={v}" for k, v in metrics.items()))
        return
    from qshift.models import load_model

    model = load_model(source, "cpu", cfg["model"].get("cache_dir"))  # downloads what the cache lacks
    info = {"model": name, "source": source, "cache_dir": cfg["model"].get("cache_dir"), "trained": False,
            "loaded_as": model.name, "parameters": sum(p.numel() for p in model.module.parameters())}
    with atomic_dir(MODEL_DIR.format(model=name)) as tmp:
        write_json(tmp / "model.json", info)
    write_json("reports/pretrain.json", info)
    log.info("pretrain: fetched %s (%d parameters) into %s", source, info["parameters"], info["cache_dir"])


if __name__ == "__main__":
    cli.run(main)
