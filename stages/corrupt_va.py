"""Stage `corrupt_video` / `corrupt_audio`: one corrupted query set of a video-audio benchmark.

``--side video --corruption NAME --severity S``: every test clip's frames under image corruption
NAME, frame by frame (src/qshift/corrupt/video.py), -> data/queries/<benchmark>/video/NAME-sS/
(the v2a queries). ``--side audio``: every test clip's soundtrack under audio corruption NAME
(gaussian noise or added environmental noise at READ's severities, src/qshift/corrupt/audio.py)
-> data/queries/<benchmark>/audio/NAME-sS/ (the a2v queries). ``--stream NAME`` instead builds
the query stream streams.<side>.NAME (-> <side>-stream/NAME/). Each output is a clip set
(src/qshift/va.py) written clip by clip. ``--draw-seed N`` (params seed_corruptions): the
corruptions drawn for run seed N, under <side>-seed<N>/ (<side>-stream-seed<N>/ for a stream).
One Snakemake rule (workflow/rules/va.smk) or DVC stage (dvc.yaml rendered for the benchmark) per
output folder.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, check_draw
    from qshift.errors import ConfigError

    p = cli.parser(__doc__)
    p.add_argument("--side", required=True, choices=("video", "audio"))
    p.add_argument("--corruption")
    p.add_argument("--severity", type=int)
    p.add_argument("--stream")
    p.add_argument("--draw-seed", type=int, default=None,
                   help="draw the corruptions for this run seed (params seed_corruptions)")
    args = p.parse_args()
    cfg = cli.load(args)  # first: it sets the CPU kernels (cpu_kernels) before torch is imported
    from qshift.va import build_query_set, build_stream

    draw = check_draw(cfg, args.draw_seed)
    ds = cfg["benchmark"]
    if args.stream is not None:
        if args.corruption is not None or args.severity is not None:
            raise ConfigError("--stream builds a stream: give it without --corruption/--severity")
        where = dict(dataset=ds, side=args.side, stream=args.stream)
        log = cli.start_log(LOGS["corrupt_stream"].format(**where) if draw is None else
                            LOGS["corrupt_stream_drawn"].format(**where, draw=draw))
        counts = build_stream(cfg, args.side, args.stream, progress=cli.progress_enabled(args), draw=draw)
        log.info("corrupt_stream: %s stream %s: %s", args.side, args.stream, counts)
        return
    if args.corruption is None or args.severity is None:
        raise ConfigError("give --corruption and --severity (one query set), or --stream NAME")
    cell = dict(dataset=ds, corruption=args.corruption, severity=args.severity)
    log = cli.start_log(LOGS[f"corrupt_{args.side}"].format(**cell) if draw is None else
                        LOGS[f"corrupt_{args.side}_drawn"].format(**cell, draw=draw))
    stats = build_query_set(cfg, args.side, args.corruption, args.severity, progress=cli.progress_enabled(args),
                            draw=draw)
    log.info("corrupt_%s: %s", args.side, stats)


if __name__ == "__main__":
    cli.run(main)
