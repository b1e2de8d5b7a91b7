"""Test-time adaptation methods behind one interface (:class:`TTAMethod`).

One method = one small module that registers itself in :data:`METHODS`.
"""

from .base import METHODS, TTAMethod, build_method, entropy  # noqa: F401


def _register_all() -> None:
    from . import deyo, eata, read, rest, sar, source, tcr, tcr_untrain, tent  # noqa: F401


_register_all()
