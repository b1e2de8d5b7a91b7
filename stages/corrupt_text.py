"""Stage `corrupt_text`: one (corruption, level) of the test split's query captions.

Output: data/queries/<benchmark>/text/<corruption>-s<level>.json, a manifest in the dataset
format whose captions are corrupted and whose images are the clean ones. Model-based types
(formal, casual, passive, active, backtrans) need corrupt.text.models.<name> in params.yaml;
without it the stage exits 2 saying so (the pipeline leaves such types out of its grid).
``--draw-seed N`` (params seed_corruptions): the captions drawn for run seed N, under text-seed<N>/.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, MANIFEST, check_draw, query_set_path
    from qshift.corrupt.build import build_text_queries
    from qshift.corrupt.text import TEXT_CORRUPTIONS, validate_text_params

    p = cli.parser(__doc__)
    p.add_argument("--corruption", required=True, help=f"one of: {', '.join(TEXT_CORRUPTIONS.names())}")
    p.add_argument("--level", required=True, type=int, help="1..7 (word probability 0.05 * level)")
    p.add_argument("--draw-seed", type=int, default=None,
                   help="draw the corruptions for this run seed (params seed_corruptions)")
    args = p.parse_args()
    cfg = cli.load(args)
    draw = check_draw(cfg, args.draw_seed)
    validate_text_params(cfg)
    TEXT_CORRUPTIONS.check(args.corruption)
    ds = cfg["benchmark"]
    cell = {"dataset": ds, "corruption": args.corruption, "severity": args.level}
    log = cli.start_log(LOGS["corrupt_text"].format(**cell) if draw is None else
                        LOGS["corrupt_text_drawn"].format(**cell, draw=draw))
    out = query_set_path(cfg, "t2i", args.corruption, args.level, draw)
    from qshift.data.prebuilt import import_text_queries, prebuilt_dir

    root = prebuilt_dir(cfg)
    if root is not None:  # the authors' prebuilt captions instead of generating them
        n = import_text_queries(MANIFEST.format(dataset=ds), out, args.corruption, args.level, root, seed=cfg["seed"])
        log.info("corrupt_text: %d prebuilt captions from %s -> %s", n, root, out)
        return
    n = build_text_queries(MANIFEST.format(dataset=ds), out, args.corruption, args.level, seed=cfg["seed"],
                           progress=cli.progress_enabled(args), cfg=cfg, draw=draw)
    log.info("corrupt_text: %d captions -> %s", n, out)


if __name__ == "__main__":
    cli.run(main)
