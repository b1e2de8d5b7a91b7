"""Stage `report`: reports/report.md (paper-form tables), reports/summary.json and figures.

Reads every results file of the experiment grid in params.yaml; missing runs are listed
with their reason in a "Not run / failed" section.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS
    from qshift.report import build_report

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    log = cli.start_log(LOGS["report"].format(dataset=cfg["benchmark"]))
    summary = build_report(cfg, cfg["report"]["dir"])
    for d, rows in summary["directions"].items():
        log.info(f"report {d}: " + ", ".join(f"{m} avg R@1 {r['avg_r1']:.1f}" if r["avg_r1"] is not None
                                          else f"{m} avg R@1 n/a" for m, r in rows.items()))
    log.info(f"report: {cfg['report']['dir']}/report.md")


if __name__ == "__main__":
    cli.run(main)
