"""Fault injection for the fault tests: ``QSHIFT_FAULT=<point>[,<point>...]`` makes a process
kill itself (SIGKILL, no cleanup runs) when it reaches one of the named points.

Unset (every normal run) it does nothing. Points: ``tracking:store_schema`` (a new sqlite
store's schema is complete in its temp file, not yet renamed into place),
``report:after_figures`` (the report's figures are drawn, no page written yet).
"""

from __future__ import annotations

import os
import signal


def point(name: str) -> None:
    wanted = os.environ.get("QSHIFT_FAULT")
    if wanted and name in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
