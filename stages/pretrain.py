"""Stage `pretrain`: train the built-in tiny open_clip CLIP on the train split.

Output: models/<model.name>/ (open_clip local-dir folder) and reports/pretrain.json.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, MODEL_DIR
    from qshift.io import write_json
    from qshift.models.train import pretrain
    from qshift.runtime import pick_device, set_threads

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    log = cli.start_log(LOGS["pretrain"].format(model=cfg["model"]["name"]))
    set_threads(cfg.get("threads", 0))
    device = pick_device(cfg["device"])
    metrics = pretrain(MANIFEST.format(dataset=cfg["benchmark"]), MODEL_DIR.format(model=cfg["model"]["name"]),
                       cfg["pretrain"], seed=cfg["seed"], device=device, amp=cfg["amp"],
                       progress=cli.progress_enabled(args))
    write_json("reports/pretrain.json", {"model": cfg["model"]["name"], "device": str(device), **metrics})
    log.info("pretrain: %s", ", ".join(f"{k}={v}" for k, v in metrics.items()))


if __name__ == "__main__":
    cli.run(main)
