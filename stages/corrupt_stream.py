"""Stage `corrupt_stream`: one multi-domain query stream (params ``streams.image`` / ``streams.text`` /
``streams.cir``).

Output: data/queries/<benchmark>/image-stream/<stream>/ (i2t: JPEG images + manifest.json) or
data/queries/<benchmark>/text-stream/<stream>.json (t2i: a manifest of corrupted captions) or
data/queries/<benchmark>/cir-stream/<stream>/ (cir: composed queries, each triplet's reference or
modification text corrupted by its domain; qshift.cir_streams, a RECONSTRUCTION of REST's
multi-modal query shift).
Each query is corrupted by its own domain with the per-corruption sets' seed and records it
(``domain``); a sequential stream also fixes the arrival order (``meta.stream.order``).
Depends on the dataset only. ``--draw-seed N`` (params seed_corruptions): the corruptions drawn
for run seed N, under image-stream-seed<N>/ / text-stream-seed<N>/.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, check_draw, stream_path, streams
    from qshift.errors import UnknownNameError
    from qshift.results import DIRECTIONS
    from qshift.streams import SIDES, build_image_stream, build_text_stream

    p = cli.parser(__doc__)
    p.add_argument("--direction", required=True, help="i2t (image stream), t2i (text stream) or cir (composed)")
    p.add_argument("--stream", required=True, help="a stream name under params streams.image / .text / .cir")
    p.add_argument("--draw-seed", type=int, default=None,
                   help="draw the corruptions for this run seed (params seed_corruptions)")
    args = p.parse_args()
    cfg = cli.load(args)
    draw = check_draw(cfg, args.draw_seed)
    if args.direction not in (*DIRECTIONS, "cir"):
        raise UnknownNameError("direction", args.direction, (*DIRECTIONS, "cir"))
    side = SIDES[args.direction][0] if args.direction in SIDES else args.direction
    defs = streams(cfg, args.direction)
    if args.stream not in defs:
        raise UnknownNameError(f"stream (params streams.{side})", args.stream, defs)
    ds = cfg["benchmark"]
    log = cli.start_log(LOGS["corrupt_stream"].format(dataset=ds, side=side, stream=args.stream) if draw is None else
                        LOGS["corrupt_stream_drawn"].format(dataset=ds, side=side, stream=args.stream, draw=draw))
    out = stream_path(cfg, args.direction, args.stream, draw)
    if args.direction == "cir":
        from qshift.cir_streams import build_cir_stream

        image = cfg["corrupt"]["image"]
        counts = build_cir_stream(MANIFEST.format(dataset=ds), out, args.stream, defs[args.stream], cfg["seed"],
                                  quality=image["jpeg_quality"],
                                  implementation=image.get("implementation", "imagecorruptions"),
                                  mm_options=image.get("mm_robustness"), cfg=cfg, progress=cli.progress_enabled(args),
                                  draw=draw)
    elif args.direction == "i2t":
        counts = build_image_stream(MANIFEST.format(dataset=ds), out, args.stream, defs[args.stream], cfg["seed"],
                                    quality=cfg["corrupt"]["image"]["jpeg_quality"],
                                    progress=cli.progress_enabled(args), draw=draw)
    else:
        counts = build_text_stream(MANIFEST.format(dataset=ds), out, args.stream, defs[args.stream], cfg["seed"],
                                   progress=cli.progress_enabled(args), draw=draw)
    log.info("corrupt_stream: %s stream %r (%s): %s -> %s", side, args.stream, defs[args.stream]["kind"],
             ", ".join(f"{d} {n}" for d, n in counts.items()), out)


if __name__ == "__main__":
    cli.run(main)
