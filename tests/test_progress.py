"""Progress reaches the log as a few lines with elapsed time and ETA; no tqdm off a terminal."""

from __future__ import annotations

import logging

from qshift import progress


def test_log_lines_every_ten_percent_with_eta(caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="qshift.progress"):
        items = list(progress.tqdm(range(50), desc="encode", unit="batch"))
    assert items == list(range(50))
    lines = [r.getMessage() for r in caplog.records if r.name == "qshift.progress"]
    assert len(lines) == 10  # 10%..90% and the closing line
    assert lines[0].startswith("encode:  10% (5/50 batch), elapsed 0:00, ETA ")
    assert lines[-1].startswith("encode: 100% (50/50 batch), elapsed ") and "ETA" not in lines[-1]


def test_manual_updates_postfix_and_context(caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="qshift.progress"):
        with progress.tqdm(total=4, desc="pretrain", unit="step", disable=True) as bar:
            for _ in range(4):
                bar.set_postfix(loss="1.234")
                bar.update()
    lines = [r.getMessage() for r in caplog.records if r.name == "qshift.progress"]
    assert lines[-1].startswith("pretrain: 100% (4/4 step)") and lines[-1].endswith("[loss=1.234]")
    assert len(lines) == 4  # 25%, 50%, 75% and the closing line (disable only hides the bar)


def test_unknown_total_and_empty_loop_are_quiet(caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="qshift.progress"):
        assert list(progress.tqdm(iter(()), desc="empty")) == []
        assert list(progress.tqdm((i for i in range(3)), desc="gen")) == [0, 1, 2]
    lines = [r.getMessage() for r in caplog.records if r.name == "qshift.progress"]
    assert lines == [lines[0]] and lines[0].startswith("gen: 3 it, elapsed")


def test_a_terminal_gets_a_real_bar(monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: True)
    bar = progress.tqdm(range(3), desc="x", disable=False)
    assert type(bar).__module__.startswith("tqdm")
    bar.close()
