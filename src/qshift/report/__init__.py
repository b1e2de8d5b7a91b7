"""Reports: paper-form tables (rows = methods, columns = corruptions, Avg), plots, HTML.

Reads exactly the results files the experiment grid declares (``config.runs``); a missing
or unreadable file becomes a "not run / failed" entry with its reason, never a silent gap.

Outputs (``report.dir``): ``report.md``, a self-contained ``report.html`` (inline CSS,
figures embedded as base64 data URIs, no scripts, nothing fetched), ``summary.json`` and
``figures/``. Per direction: R@1/R@5/R@10 tables with the clean reference column, deltas to
``source``, the paper's numbers beside reproduced ones where the benchmark matches
(:mod:`qshift.paper`), and plots: R@1 per shift, R@1 against severity (grids with several
severities), a method x corruption heatmap, online R@1 along the stream, and forgetting on
sequential streams.

Streams (params ``streams``, :mod:`qshift.streams`): per direction a method x stream table,
each stream's R@1 beside the same method's independent runs on the stream's domains
(:func:`stream_tables`), and per domain for mixed streams. A results file whose ``online``
block carries ``domain`` (one domain label per batch, e.g. ``gaussian_noise-s5``) and that is
not a mixed stream is a sequential stream; the report splits its per-batch R@1 by domain
(:func:`sequential_curves`) and compares each domain with that method's independent run on
the same domain (:func:`forgetting_table`).

MLflow: results the current store does not hold (looked up by run key, whatever their
``mlflow.logged`` says) are replayed to it (the results files are never modified) and every
run of the grid is attached to its sweep's parent run; the report lists what was replayed and
what still fails (:func:`qshift.tracking.sync_sweep`).

The package: :mod:`~qshift.report.inputs` (collecting the runs), :mod:`~qshift.report.tables`
(tables as data and as blocks), :mod:`~qshift.report.figures` (plots),
:mod:`~qshift.report.blocks` (the blocks and their Markdown and HTML renderers) and
:mod:`~qshift.report.build` (the report as sections of blocks; :func:`build_report`).
"""

from __future__ import annotations

from .blocks import CSS
from .build import DIRECTION_TITLE, METRICS, STREAMS_NOTE, build_report
from .figures import (_plt, _save, plot_bars, plot_forgetting, plot_heatmap, plot_online, plot_severity,
                      severity_series)
from .inputs import (BASELINE, _by_key, _cells, cell_label, collect, independent_r1, query_provenance,
                     sequential_curves)
from .tables import (FORGETTING_COLUMNS, avg_note, delta_table, direction_table, forgetting_table,
                     markdown_delta_table, markdown_forgetting_table, markdown_paper_table, markdown_table,
                     paper_comparison, stream_tables)

__all__ = ["BASELINE", "CSS", "DIRECTION_TITLE", "FORGETTING_COLUMNS", "METRICS", "STREAMS_NOTE", "avg_note",
           "build_report", "cell_label", "collect", "delta_table", "direction_table", "forgetting_table",
           "independent_r1", "markdown_delta_table", "markdown_forgetting_table", "markdown_paper_table",
           "markdown_table", "paper_comparison", "plot_bars", "plot_forgetting", "plot_heatmap", "plot_online",
           "plot_severity", "query_provenance", "sequential_curves", "severity_series", "stream_tables",
           "_by_key", "_cells", "_plt", "_save"]
