"""The registered TTA methods as data — names, hyperparameter defaults, ``adapts`` — without torch.

The Snakefile validates params before any job on every invocation, a dry run and a no-op rerun
included: method names, variants, every hyperparameter typed as its method's default. The methods
themselves (:mod:`qshift.tta`) import torch, about 2 s of a 4–5 s no-op rerun, while what
validation reads of them is data. :func:`registered_methods` returns that data as a
:class:`~qshift.registry.Registry` of :class:`MethodSpec` (same names, same errors as
``qshift.tta.METHODS``), from a small JSON file in the user's cache
(``$XDG_CACHE_HOME/qshift/method-catalog/<key>.json``, ``~/.cache`` by default). The key hashes
the bytes of every source file of the package, so editing or adding a method file makes a new
key: that first call imports :mod:`qshift.tta`, reads the live registry and writes the file
(atomically; skipped, with a debug line, where the folder is not writable). A process that has imported :mod:`qshift.tta`
already (an adapt or tune job) gets the live registry itself, so the jobs see exactly the classes.

Defaults that JSON would not give back exactly (a tuple, a non-finite float) are never cached:
the call then imports :mod:`qshift.tta`, which is only slower.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import Registry

log = logging.getLogger("qshift.config")

FORMAT = 1  # bump when the cached fields change
PACKAGE = Path(__file__).resolve().parent / "tta"


@dataclass(frozen=True)
class MethodSpec:
    """What the parameter checks read of a registered method (a ``TTAMethod`` class has the same)."""

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)
    adapts: bool = True


def coerce_hparam(method: str, key: str, value: Any, default: Any) -> Any:
    """Hyperparameters take the type of their default (``lr: 1e-3`` is a string in YAML 1.1)."""
    if isinstance(default, bool) or default is None or isinstance(value, type(default)):
        return value
    if isinstance(default, (int, float)):
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"hyperparameter {method}.{key} must be a number, got {value!r}") from None
        if isinstance(default, int) and not isinstance(default, bool):
            if not as_float.is_integer():
                raise ConfigError(f"hyperparameter {method}.{key} must be an integer, got {value!r}")
            return int(as_float)
        return as_float
    return value


def catalog_key(package: Path = PACKAGE) -> str:
    """A hash of the bytes of every ``.py`` file of the tta package (names included)."""
    h = hashlib.sha256(f"qshift-method-catalog/{FORMAT}".encode())
    for path in sorted(package.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def catalog_path(package: Path = PACKAGE) -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "qshift" / "method-catalog" / f"{catalog_key(package)}.json"


def _exact(value: Any) -> bool:
    """True when JSON gives ``value`` back with the same types and value."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_exact(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _exact(v) for k, v in value.items())
    return False


def _registry(specs: list[MethodSpec]) -> Registry[MethodSpec]:
    reg: Registry[MethodSpec] = Registry("method")
    for spec in specs:
        reg.register(spec.name)(spec)
    return reg


def _read(path: Path) -> Registry[MethodSpec] | None:
    try:
        doc = json.loads(path.read_text())
        if doc.get("format") != FORMAT:
            return None
        return _registry([MethodSpec(m["name"], dict(m["defaults"]), bool(m["adapts"])) for m in doc["methods"]])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, half-written by an older tool, or hand-edited: rebuild it


def _write(path: Path, live) -> None:
    specs = [{"name": n, "defaults": dict(live.get(n).defaults), "adapts": bool(live.get(n).adapts)}
             for n in live.names()]
    if not all(_exact(s["defaults"]) for s in specs):
        log.debug("method catalog not cached: a default does not survive JSON")
        return
    from .io import write_json

    try:
        write_json(path, {"format": FORMAT, "methods": specs})
    except OSError as e:  # an unwritable cache folder: each call imports qshift.tta, as before
        log.debug("method catalog not cached at %s: %s", path, e)


@functools.lru_cache(maxsize=None)
def _catalog() -> Registry[MethodSpec] | None:
    """This process's cached catalog, read once (the DAG asks for the methods ~150 times); None
    when there is none to read: it is then built from :mod:`qshift.tta`, imported here."""
    try:
        path = catalog_path()
    except (OSError, RuntimeError, KeyError):  # no home folder to resolve (a bare batch environment)
        path = None
    cached = _read(path) if path is not None else None
    if cached is None:
        from .tta import METHODS

        if path is not None:
            _write(path, METHODS)
    return cached


def registered_methods():
    """The registry of methods: ``qshift.tta.METHODS`` in a process that imported it, else the
    cached catalog (built from it once per content of the package's sources)."""
    if "qshift.tta" not in sys.modules:
        cached = _catalog()
        if cached is not None:
            return cached
    return sys.modules["qshift.tta"].METHODS
