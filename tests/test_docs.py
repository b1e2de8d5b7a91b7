"""The repository's docs are self-contained: nothing points outside the repository at the
project's spec files, and every relative link and repository path the docs name exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = re.compile(r"\.\./shared/|/work/shared|shared/spec|\b(?:METHODS|BENCHMARKS|BUILTIN|REST|PLATFORM)\.md")


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True, check=True)
    return [REPO / p for p in out.stdout.split()]


def test_nothing_points_at_the_external_spec():
    hits = []
    for path in tracked("*.py", "*.md", "*.yaml", "*.yml", "*.txt", "*.smk", "*.sh", "*.toml", "workflow/Snakefile"):
        if path == Path(__file__).resolve():
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if SPEC.search(line):
                hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)


def test_docs_links_and_paths_exist():
    docs = sorted((REPO / "docs").glob("*.md"))
    assert {p.name for p in docs} >= {"README.md", "methods.md", "benchmarks.md", "builtin.md", "rest.md",
                                      "platform.md"}
    bad = []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")) and not (doc.parent / target).exists():
                bad.append(f"{doc.name}: link {target}")
        for path in re.findall(r"`((?:src|tests|scripts|stages|workflow|slurm|benchmarks)/[\w./-]+)`", text):
            if not (REPO / path).exists():
                bad.append(f"{doc.name}: path {path}")
    assert not bad, "\n".join(bad)
