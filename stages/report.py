"""Stage `report`: reports/report.md and a self-contained reports/report.html (paper-form
tables, R@1/5/10, deltas to source, the paper's numbers where the benchmark matches, plots),
reports/summary.json and reports/figures/; reports/metrics.json, reports/plots/ and
reports/tables/ (src/qshift/report_export.py).

Reads every results file of the experiment grid in params.yaml; missing runs are listed
with their reason in a "Not run / failed" section, as are diverged runs and results files that
fail validation (the report is written as a set: a kill while building it leaves the previous
one in place). Results the current MLflow store does not hold (looked up by run key) are
replayed now (the results files are not modified), and every run is
attached to its sweep's parent run; the report says what was replayed and what still fails.
"""

from qshift import cli


def main() -> None:
    from qshift.config import LOGS
    from qshift.report import build_report
    from qshift.report_export import export

    args = cli.parser(__doc__).parse_args()
    cfg = cli.load(args)
    log = cli.start_log(LOGS["report"].format(dataset=cfg["benchmark"]))
    summary = build_report(cfg, cfg["report"]["dir"])
    export(cfg, cfg["report"]["dir"])  # metrics.json, plots/ (DVC) and tables/ (CSV, LaTeX)
    for d, rows in summary["directions"].items():
        log.info(f"report {d}: " + ", ".join(f"{m} avg R@1 {r['avg_r1']:.1f}" if r["avg_r1"] is not None
                                          else f"{m} avg R@1 n/a" for m, r in rows.items()))
    for d in summary.get("diverged", []):
        log.warning(f"report: {d['run']} diverged at batch {d['batch']} ({d['reason']}): listed under failures")
    mlflow = summary.get("mlflow") or {}
    if mlflow:
        log.info(f"report: MLflow replayed {mlflow['replayed']} run(s), {mlflow['failing']} still not logged")
    log.info(f"report: {cfg['report']['dir']}/report.md, {cfg['report']['dir']}/report.html")


if __name__ == "__main__":
    cli.run(main)
