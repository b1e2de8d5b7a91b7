"""Stage `observe`: the papers' observation statistics of every run of the grid (cheap).

Reads only the results files (the adapt stage records per-batch query uniformity, query-gallery
gap and consistency, and for ``observe.grad_angle`` methods the gradient angle), writes
reports/observations.json and adds ``obs.*`` metrics to each run's MLflow run. The report
renders them (qshift.observations).
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS, experiment_name
    from qshift.io import write_json
    from qshift.observations import OBSERVATIONS, mlflow_metrics, observe
    from qshift.report import collect
    from qshift.tracking import log_observations, tracking_uri

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    log = cli.start_log(LOGS["observe"].format(dataset=cfg["benchmark"]))
    found, missing = collect(cfg)
    doc = observe(cfg, found)
    doc["missing"] = [r.result_path for r, _ in missing]
    doc["mlflow"] = log_observations(tracking_uri(cfg), experiment_name(cfg),
                                     {k: mlflow_metrics(v) for k, v in doc["runs"].items()})
    write_json(OBSERVATIONS, doc)
    for d, dd in doc["directions"].items():
        log.info(f"observe {d}: " + "; ".join(
            f"{s}: U {v['uniformity']:.3f} G {v['gap']:.3f} C {v['consistency']:.3f}"
            for s, v in dd["source"].items() if None not in (v["uniformity"], v["gap"], v["consistency"])))
    log.info(f"observe: {len(doc['runs'])} run(s), {len(doc['without'])} without statistics, "
             f"{len(missing)} missing; MLflow: {doc['mlflow']['logged']} run(s) updated; {OBSERVATIONS}")


if __name__ == "__main__":
    cli.run(main)
