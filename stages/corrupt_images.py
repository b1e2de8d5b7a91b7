"""Stage `corrupt_images`: one (corruption, severity) of the test split's query images.

Output: data/queries/<benchmark>/image/<corruption>-s<severity>/ with JPEG images (quality
from params) and a manifest.json in the dataset format (captions unchanged).
"""

from qshift import cli


def main() -> None:
    from qshift.config import IMAGE_QUERIES, LOGS, MANIFEST
    from qshift.corrupt.build import build_image_queries

    p = cli.parser(__doc__)
    p.add_argument("--corruption", required=True)
    p.add_argument("--severity", required=True, type=int)
    args = p.parse_args()
    cfg = cli.load(args)
    ds = cfg["benchmark"]
    log = cli.start_log(LOGS["corrupt_images"].format(dataset=ds, corruption=args.corruption,
                                                          severity=args.severity))
    out = IMAGE_QUERIES.format(dataset=ds, corruption=args.corruption, severity=args.severity)
    n = build_image_queries(MANIFEST.format(dataset=ds), out, args.corruption, args.severity, seed=cfg["seed"],
                            quality=cfg["corrupt"]["image"]["jpeg_quality"], progress=cli.progress_enabled(args))
    log.info("corrupt_images: %d images -> %s", n, out)


if __name__ == "__main__":
    cli.run(main)
