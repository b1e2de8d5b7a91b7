"""Stage `encode_gallery`: encode the clean test split once per (model, dataset).

Output: data/embeddings/<model>/<benchmark>/gallery.pt (image and caption embeddings with
their owner ids). Adaptation jobs read it and never re-encode the gallery.
"""

from qshift import cli


def main() -> None:
    from qshift.config import GALLERY, LOGS, MANIFEST

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)  # first: it sets the CPU kernels (cpu_kernels) before torch is imported
    from qshift.gallery import encode_gallery
    from qshift.models import load_model
    from qshift.runtime import pick_device, set_threads

    log = cli.start_log(LOGS["encode_gallery"].format(model=cfg["model"]["name"], dataset=cfg["benchmark"]))
    set_threads(cfg.get("threads", 0))
    model = load_model(cfg["model"]["source"], pick_device(cfg["device"]), cfg["model"].get("cache_dir"),
                       preprocess=cfg["model"].get("preprocess", "native"))
    out = GALLERY.format(model=cfg["model"]["name"], dataset=cfg["benchmark"])
    from qshift.tasks import cfg_task, hook, is_cir

    task_encode = hook(cfg_task(cfg).name, "encode_gallery")  # video-audio: both modalities of the test clips
    if task_encode is not None:
        stats = task_encode(cfg, model, out)
        log.info("encode_gallery: %s -> %s", stats, out)
        return
    if is_cir(cfg):  # composed image retrieval: the test split's target images (+ distractors), image tower
        from qshift.cir import encode_cir_gallery
        from qshift.config import DATASET_DIR

        stats = encode_cir_gallery(model, DATASET_DIR.format(dataset=cfg["benchmark"]), out, cfg["model"]["batch_size"])
        log.info("encode_gallery: %s -> %s", stats, out)
        return
    stats = encode_gallery(model, MANIFEST.format(dataset=cfg["benchmark"]), out, cfg["model"]["batch_size"],
                           cfg["num_workers"])
    log.info("encode_gallery: %s -> %s", stats, out)


if __name__ == "__main__":
    cli.run(main)
