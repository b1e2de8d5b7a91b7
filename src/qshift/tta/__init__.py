"""Test-time adaptation methods behind one interface (:class:`TTAMethod`).

One method = one small module in this package that registers itself in :data:`METHODS`
(``@register_method("name")``); every module here is imported once, in name order, so a new
file is picked up without an import list.
"""

import importlib
import pkgutil

from .base import METHODS, TTAMethod, build_method, entropy  # noqa: F401


def _register_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_register_all()
