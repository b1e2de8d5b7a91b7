"""Stage `download`: fetch a benchmark's test annotations and images into data/raw/<benchmark>/.

COCO: BLIP's Karpathy-test annotations + COCO val2014 images (public URLs); Flickr30k:
annotations from a public URL, images from the local archive or folder named in
datasets.flickr30k.images.path; NoCaps: the annotation file, then each image from its own URL;
Fashion-Gen, CUHK-/ICFG-PEDES, RSICD/RSITMD/UCM: local paths (request-only). Files are downloaded into download.cache_dir (resumed on
rerun, sha256-checked when params record one); only the test images are extracted. The
built-in benchmark downloads nothing and gets a download.json saying so.
Output: data/raw/<benchmark>/ (annotations/, images/, download.json).
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, RAW_DIR, dataset_params
    from qshift.data.karpathy import download_dataset
    from qshift.errors import ConfigError
    from qshift.presets import dataset_name

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    bench = cfg["benchmark"]
    if "download" not in cfg:
        raise ConfigError("download: params has no top-level 'download' section (cache_dir, mirror, retries, "
                          "backoff, timeout)")
    log = cli.start_log(LOGS["download"].format(dataset=bench))
    info = download_dataset(dataset_name(cfg), dataset_params(cfg), cfg["download"], RAW_DIR.format(dataset=bench),
                            progress=cli.progress_enabled(args))
    log.info("download: %s", {k: v for k, v in info.items() if k != "files"})


if __name__ == "__main__":
    cli.run(main)
