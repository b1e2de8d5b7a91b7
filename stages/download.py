"""Stage `download`: fetch a benchmark's test annotations and images into data/raw/<dataset>/.

COCO: BLIP's Karpathy-test annotations + COCO val2014 images (public URLs); Flickr30k:
annotations from a public URL, images from the local archive or folder named in
datasets.flickr30k.images.path. Files are downloaded into download.cache_dir (resumed on
rerun, sha256-checked when params record one); only the test images are extracted. The
built-in benchmark downloads nothing and gets a download.json saying so.
Output: data/raw/<dataset>/ (annotations/, images/, download.json).
"""

from qshift import cli


def main() -> None:
    from qshift.data.karpathy import RAW_DIR, download_dataset
    from qshift.errors import ConfigError

    p = cli.parser(__doc__)
    p.add_argument("--dataset", help="entry of `datasets` to download (default: params' benchmark)")
    args = p.parse_args()
    cfg = cli.load(args)
    name = args.dataset or cfg["benchmark"]
    if name not in cfg["datasets"]:
        raise ConfigError(f"download: dataset {name!r} has no entry under 'datasets'; valid: {', '.join(cfg['datasets'])}")
    if "download" not in cfg:
        raise ConfigError("download: params has no top-level 'download' section (cache_dir, mirror, retries, "
                          "backoff, timeout)")
    log = cli.start_log(f"logs/download/{name}.log")
    info = download_dataset(name, cfg["datasets"][name], cfg["download"], RAW_DIR.format(dataset=name),
                            progress=cli.progress_enabled(args))
    log.info("download: %s", {k: v for k, v in info.items() if k != "files"})


if __name__ == "__main__":
    cli.run(main)
