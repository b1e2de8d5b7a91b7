"""Stage `corrupt_images`: one (corruption, severity) of the test split's query images.

Output: data/queries/<benchmark>/image/<corruption>-s<severity>/ with JPEG images (quality
from params) and a manifest.json in the dataset format (captions unchanged). Images are
corrupted on a pool of `corrupt.image.workers` processes (0 = all cores of the job).

Big datasets can fan out further: `--shard i/n` builds every n-th image from the i-th into
<output>.shards/<i>-of-<n>/, and `--merge-shards n` joins the n shard folders into the
output; the result is byte-identical to a single job. ``--draw-seed N`` (params
seed_corruptions): the corruptions drawn for run seed N, under image-seed<N>/.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, check_draw, query_set_path
    from qshift.corrupt.build import build_image_queries, merge_image_shards, parse_shard, shard_dir
    from qshift.errors import ConfigError

    p = cli.parser(__doc__)
    p.add_argument("--corruption", required=True)
    p.add_argument("--severity", required=True, type=int)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--shard", metavar="I/N", help="build only shard I of N (0 <= I < N)")
    mode.add_argument("--merge-shards", metavar="N", type=int, help="join the N built shards into the output")
    p.add_argument("--draw-seed", type=int, default=None,
                   help="draw the corruptions for this run seed (params seed_corruptions)")
    args = p.parse_args()
    cfg = cli.load(args)
    draw = check_draw(cfg, args.draw_seed)
    ds = cfg["benchmark"]
    params = cfg["corrupt"]["image"]
    out = query_set_path(cfg, "i2t", args.corruption, args.severity, draw)
    cell = {"dataset": ds, "corruption": args.corruption, "severity": args.severity}
    log_path = (LOGS["corrupt_images"].format(**cell) if draw is None else
                LOGS["corrupt_images_drawn"].format(**cell, draw=draw))
    if args.merge_shards is not None:
        if args.merge_shards < 1:
            raise ConfigError(f"--merge-shards must be >= 1, got {args.merge_shards}")
        log = cli.start_log(log_path)
        n = merge_image_shards([shard_dir(out, i, args.merge_shards) for i in range(args.merge_shards)], out)
        log.info("corrupt_images: merged %d shards, %d images -> %s", args.merge_shards, n, out)
        return
    from qshift.data.prebuilt import import_image_queries, prebuilt_dir

    root = prebuilt_dir(cfg)
    if root is not None:  # the authors' prebuilt images instead of generating them
        if args.shard:
            raise ConfigError("--shard builds images; with datasets.<name>.prebuilt set they are imported whole")
        log = cli.start_log(log_path)
        n = import_image_queries(MANIFEST.format(dataset=ds), out, args.corruption, args.severity, root, cfg["seed"])
        log.info("corrupt_images: %d prebuilt images from %s -> %s", n, root, out)
        return
    shard = parse_shard(args.shard) if args.shard else None
    if shard:
        out = str(shard_dir(out, *shard))
        log_path = log_path.removesuffix(".log") + f".shard{shard[0]}-of-{shard[1]}.log"
    log = cli.start_log(log_path)
    n = build_image_queries(MANIFEST.format(dataset=ds), out, args.corruption, args.severity, seed=cfg["seed"],
                            quality=params["jpeg_quality"], progress=cli.progress_enabled(args),
                            workers=params.get("workers", 1), shard=shard,
                            implementation=params.get("implementation", "imagecorruptions"),
                            mm_options=params.get("mm_robustness"), draw=draw)
    log.info("corrupt_images: %d images -> %s", n, out)


if __name__ == "__main__":
    cli.run(main)
