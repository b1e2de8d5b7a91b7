"""Fault injection for the fault tests (``tests/test_faults*.py``, marker ``faults``).

``QSHIFT_FAULT=<point>[,<point>...]`` makes a process kill itself with SIGKILL — as ``kill -9``,
``scancel`` or the OOM killer would — when it reaches one of the named points. Unset (every
normal run), :func:`point` is one environment lookup and does nothing.

Points: ``atomic_dir.before_publish`` (an output folder is complete but not yet renamed into
place), ``atomic_path.before_publish`` (likewise for a file), ``corrupt_images.pool_running``
(a corrupt_images job whose worker pool has finished its first image), ``tracking:store_schema``
(a new sqlite store's schema is complete in its temp file, not yet renamed into place),
``report:after_figures`` (the report's figures are drawn, no page written yet).
"""

from __future__ import annotations

import os
import signal

ENV = "QSHIFT_FAULT"


def point(name: str) -> None:
    spec = os.environ.get(ENV)
    if spec and name in spec.split(","):
        os.kill(os.getpid(), signal.SIGKILL)
