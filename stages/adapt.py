"""Stage `adapt`: one (method[s], direction, seed) job over its cells, or one cell alone.

    python stages/adapt.py --method tcr --direction i2t [--seed 42] [--force]
    python stages/adapt.py --method source,tent,tcr --direction i2t     # several methods, one process
    python stages/adapt.py --method tcr --direction i2t --corruption gaussian_noise --severity 3

Without ``--corruption`` (what Snakemake and DVC run) the job loads the model and the cached
gallery embeddings once and adapts every cell of (method, direction, seed) the grid has, for
each method of a comma-separated ``--method`` list in turn (Snakemake's ``adapt_jobs: direction``
runs every method of a direction in one job; the model is back at its source weights for each
cell) —
the clean reference run for ``adapt.clean_methods``, each corruption and severity, each of the
direction's streams for ``streams.methods`` — one after another, skipping the cells whose
results file is up to date (same fingerprint: :mod:`qshift.cells`; ``--force`` runs them all).
With ``--corruption``/``--severity`` it runs that one cell (``clean --severity 0`` is the
clean-query reference run; ``<stream> --severity 0`` one of the direction's multi-domain
streams), whatever its results file holds.

Each cell writes results/<dataset>/<model>/<direction>/<method>/seed<seed>/<corruption>-s<severity>.json
(R@1/5/10, the per-batch online curve, method statistics) and its per-query outcomes as it
finishes, then logs its MLflow run. A run whose scores or adapted parameters go non-finite is
recorded as ``status: diverged`` (no R@K; MLflow marks it FAILED) and the stage still exits 0
with a WARNING: it is a finished result, listed by the report under failures.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, Run, adapt_job_log, check_method, run_seeds
    from qshift.errors import ConfigError, UnknownNameError
    from qshift.results import CLEAN

    p = cli.parser(__doc__)
    p.add_argument("--method", required=True)
    p.add_argument("--direction", required=True)
    p.add_argument("--corruption", default=None,
                   help=f"one cell: a corruption name, a stream name, or {CLEAN!r} (default: every cell of the job)")
    p.add_argument("--severity", type=int, default=None, help="the cell's severity (0 for clean and streams)")
    p.add_argument("--seed", type=int, default=None,
                   help="the adaptation seed, one of params seeds (default: the first)")
    p.add_argument("--force", action="store_true", help="run every cell of the job, up to date or not")
    args = p.parse_args()
    cfg = cli.load(args)
    seeds = run_seeds(cfg)
    seed = seeds[0] if args.seed is None else args.seed
    if seed not in seeds:
        raise ConfigError(f"--seed {seed} is not one of params seeds {seeds} (add it to seeds to run it: "
                          f"its results then sit beside the others)")
    methods = [m for m in args.method.split(",") if m]
    if not methods:
        raise ConfigError("--method names no method (a method, or several separated by commas)")
    for m in methods:
        check_method(cfg, m)  # unknown names fail before any work (a variant names a known base)
    from qshift.tasks import all_directions

    if args.direction not in all_directions():  # every task's directions (qshift.tasks): i2t, t2i, cir
        raise UnknownNameError("direction", args.direction, all_directions())
    if (args.corruption is None) != (args.severity is None):
        raise ConfigError("--corruption and --severity go together (one cell), or neither (the whole job)")

    from qshift import cells
    from qshift.gallery import QUERY_IMAGES, query_job_settings

    if args.corruption is not None:  # one cell
        if len(methods) > 1:
            raise ConfigError(f"--corruption runs one cell of one method; --method lists {len(methods)}: {args.method}")
        cells.check_cell(cfg, args.direction, args.corruption, args.severity)
        run = Run(cfg["benchmark"], cfg["model"]["name"], args.direction, methods[0], args.corruption,
                  args.severity, seed)
        cli.start_log(LOGS["adapt"].format(**run.key))
        query_job_settings(cfg)
        queries = cells.load_queries(cfg, run)  # a bad query set fails before the model is loaded
        job = cells.Job(cfg, stage_file=__file__, progress=cli.progress_enabled(args))
        job.run(run, queries=queries)
        return

    todo = {m: cells.job_cells(cfg, m, args.direction, seed) for m in methods}
    for m, mine in todo.items():
        if not mine:
            raise ConfigError(f"method {m!r} has no cells in direction {args.direction} (adapt.methods, "
                              f"adapt.directions, adapt.clean_methods, streams.methods)")
    cells.require_inputs(cfg, [r for mine in todo.values() for r in mine])
    log = cli.start_log(adapt_job_log(cfg["benchmark"], cfg["model"]["name"], args.direction, methods, seed))
    query_job_settings(cfg)  # threads; a query set read by several methods is decoded once
    job = cells.Job(cfg, stage_file=__file__, progress=cli.progress_enabled(args))
    for m in methods:
        done = cells.run_job(job, todo[m], force=args.force)
        log.info(f"adapt: {m} {args.direction} seed {seed}: {done['run']} cells run "
                 f"({done['seconds']:.1f}s adapting), {done['up_to_date']} up to date")
    if line := QUERY_IMAGES.summary():
        log.info(f"adapt: {line}")


if __name__ == "__main__":
    cli.run(main)
