"""The ``qshift`` console script: look at results without rerunning anything.

    qshift table [--metric R@1] [--direction i2t] [--csv | --latex]   # the report's tables from results/
    qshift compare A B                                                # Δ R@1 (B - A) per method and direction

``table`` reads the results files of the grid in params.yaml (``--params``, ``--set`` as the
stage CLIs) and prints the tables the report shows (:func:`qshift.report.direction_table`).
``compare`` takes two results folders (e.g. ``results/builtin/qshift-tiny-clip`` of two
checkouts) or two MLflow sweep keys (tag ``qshift.sweep_key`` of the sweep parent runs, e.g.
``builtin/qshift-tiny-clip/sweep-1a2b3c4d5e6f``; the store of ``mlflow.tracking_uri``) and prints,
per direction and method, the mean R@1 of each over the cells both ran and the difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InputError, QShiftError


def _table(args) -> None:
    from .config import default_params_path, load_params
    from .report import collect, delta_table, direction_table, markdown_delta_table, markdown_table
    from .report_export import table_csv, table_latex

    cfg = load_params(args.params or default_params_path(), args.overrides)
    directions = [args.direction] if args.direction else cfg["adapt"]["directions"]
    for d in directions:
        if d not in cfg["adapt"]["directions"]:
            raise InputError(f"--direction: {d!r} is not in adapt.directions (choices: "
                             f"{', '.join(cfg['adapt']['directions'])})")
    found, missing = collect(cfg)
    if not found:
        raise InputError(f"no results files of the grid found (first missing: {missing[0][0].result_path})"
                         if missing else "the grid in params.yaml has no runs")
    for d in directions:
        table = direction_table(cfg, d, found, args.metric)
        title = f"{args.metric} (%), {d} ({cfg['benchmark']}, {cfg['model']['name']})"
        if args.csv:
            print(table_csv(table), end="")
        elif args.latex:
            print(table_latex(table, title), end="")
        else:
            print(f"## {title}\n\n{markdown_table(table)}\n")
            delta = delta_table(table)
            if delta is not None and delta["rows"] and not args.no_delta:
                print(f"Δ {args.metric} to source:\n\n{markdown_delta_table(delta)}\n")


def _cells_from_folder(root: Path) -> dict[tuple[str, str, str], float]:
    cells = {}
    for f in sorted(root.rglob("*.json")):
        try:
            doc = json.loads(f.read_text())
            k = doc["key"]
            seed = "" if k.get("seed") is None else f"/seed{k['seed']}"  # each seed its own cell
            cells[(k["direction"], k["method"], f"{k['corruption']}-s{k['severity']}{seed}")] = float(doc["metrics"]["R@1"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a results file
    if not cells:
        raise InputError(f"{root}: no results files (results/<benchmark>/<model>/<direction>/<method>/seed<seed>/*.json)")
    return cells


def _cells_from_sweep(key: str, uri: str) -> dict[tuple[str, str, str], float]:
    from .tracking import TAG_ROLE, TAG_SWEEP, _client, _quote

    client = _client(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(exps, filter_string=f"tags.`{TAG_SWEEP}` = '{_quote(key)}'", max_results=5000) if exps else []
    cells = {}
    for r in runs:
        p = r.data.params
        if r.data.tags.get(TAG_ROLE) != "run" or "R_at_1" not in r.data.metrics:
            continue
        seed = f"/seed{p['key.seed']}" if "key.seed" in p else ""
        cells[(p["key.direction"], p["key.method"], f"{p['key.corruption']}-s{p['key.severity']}{seed}")] = \
            r.data.metrics["R_at_1"]
    if not cells:
        raise InputError(f"{key!r}: neither a results folder nor a sweep key with runs in the MLflow store {uri} "
                         f"(sweep keys: tag qshift.sweep_key of the sweep parent runs)")
    return cells


def _cells(source: str, uri: str) -> dict[tuple[str, str, str], float]:
    return _cells_from_folder(Path(source)) if Path(source).is_dir() else _cells_from_sweep(source, uri)


def compare(a: dict, b: dict) -> list[dict]:
    """Per (direction, method): mean R@1 of A and of B over the corruption cells both ran (clean apart)."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    clean: dict[tuple[str, str], tuple[float, float]] = {}
    for k in sorted(set(a) & set(b)):
        d, m, cell = k
        if cell.split("/")[0] == "clean-s0":
            clean[(d, m)] = (a[k], b[k])
        else:
            groups.setdefault((d, m), []).append((a[k], b[k]))
    rows = []
    for d, m in sorted(set(groups) | set(clean)):
        pairs = groups.get((d, m), [])
        ra = sum(x for x, _ in pairs) / len(pairs) if pairs else None
        rb = sum(y for _, y in pairs) / len(pairs) if pairs else None
        rows.append({"direction": d, "method": m, "cells": len(pairs), "a": ra, "b": rb,
                     "delta": rb - ra if pairs else None,
                     "clean_delta": clean[(d, m)][1] - clean[(d, m)][0] if (d, m) in clean else None})
    return rows


def _compare(args) -> None:
    from .config import default_params_path, load_params
    from .tracking import tracking_uri

    uri = args.tracking_uri
    if uri is None and not (Path(args.a).is_dir() and Path(args.b).is_dir()):
        uri = tracking_uri(load_params(args.params or default_params_path(), args.overrides))
    rows = compare(_cells(args.a, uri), _cells(args.b, uri))
    if not rows:
        raise InputError(f"{args.a} and {args.b} have no (direction, method, cell) in common")
    f = lambda v, s="": "—" if v is None else (f"{v:+.2f}" if s else f"{v:.2f}")  # noqa: E731
    print(f"A = {args.a}\nB = {args.b}\n")
    print("| Direction | Method | Cells | Avg R@1 A | Avg R@1 B | Δ (B - A) | Δ clean |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['direction']} | {r['method']} | {r['cells']} | {f(r['a'])} | {f(r['b'])} | "
              f"{f(r['delta'], '+')} | {f(r['clean_delta'], '+')} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="qshift", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default=None, help="params file (default: $QSHIFT_PARAMS, else params.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a params value (repeatable)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("table", help="print the report's tables from the results files")
    t.add_argument("--metric", default="R@1", choices=["R@1", "R@5", "R@10"])
    t.add_argument("--direction", default=None, help="one direction (default: all of adapt.directions)")
    fmt = t.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV (full precision)")
    fmt.add_argument("--latex", action="store_true", help="LaTeX (booktabs)")
    t.add_argument("--no-delta", action="store_true", help="Markdown: leave out the Δ-to-source table")
    c = sub.add_parser("compare", help="Δ R@1 between two results folders or two MLflow sweep keys")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tracking-uri", default=None, help="MLflow store for sweep keys (default: params / "
                                                          "$MLFLOW_TRACKING_URI)")
    args = p.parse_args(argv)
    try:
        {"table": _table, "compare": _compare}[args.command](args)
    except QShiftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
