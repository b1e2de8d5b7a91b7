"""Retrieval tasks: what a direction's queries and gallery are, and which parts adapt.

A *task* groups directions that share a dataset format and a gallery file. Each direction
declares its query modality (what the TTA method encodes and adapts), its gallery modality,
which corruption registries shift its queries (``sides``), its Recall@K and its report title.

- ``image-text`` — cross-modal retrieval: ``i2t`` (image queries, caption gallery) and
  ``t2i`` (caption queries, image gallery). Its code paths are the ones QShift always had:
  every function below returns, for these directions, exactly what the code before tasks
  computed (the results files are byte-identical).
- ``cir`` — composed image retrieval (:mod:`qshift.cir`): direction ``cir``, a query is a
  (reference image, modification text) pair encoded by the composed encoder, the gallery is
  target images (plus distractors). Query shift: image corruptions on the reference image,
  text corruptions on the modification text; TTA adapts the LayerNorms of both towers.

Adding a task = one module that registers a :class:`Task` here (its directions, its query
loader and gallery) plus its data adapter. A pipeline runs one task (``adapt.directions`` may
not mix tasks: each has its own dataset and gallery).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .errors import ConfigError
from .registry import Registry


@dataclass(frozen=True)
class Direction:
    name: str
    task: str
    query_modality: str  # what the TTA method encodes: image | text | composed
    gallery_modality: str  # image | text
    sides: tuple[str, ...]  # corruption registries that shift the queries: image and/or text
    recall_ks: tuple[int, ...]
    title: str


@dataclass(frozen=True)
class Task:
    name: str
    directions: tuple[Direction, ...]
    encoders: tuple[str, ...]  # the model parts the task runs
    adapts: str  # which parameters TTA adapts (documentation, README, report)
    description: str = ""
    hooks: dict[str, Callable] = field(default_factory=dict)  # task-specific loaders (cir: qshift.cir)


TASKS: Registry[Task] = Registry("task")
_DIRECTIONS: dict[str, Direction] = {}


def register_task(task: Task) -> Task:
    TASKS.register(task.name)(task)
    for d in task.directions:
        if d.name in _DIRECTIONS:
            raise ValueError(f"direction {d.name!r} registered twice")
        _DIRECTIONS[d.name] = d
    return task


register_task(Task(
    "image-text",
    (Direction("i2t", "image-text", "image", "text", ("image",), (1, 5, 10),
               "Image-to-text retrieval (image queries corrupted)"),
     Direction("t2i", "image-text", "text", "image", ("text",), (1, 5, 10),
               "Text-to-image retrieval (caption queries corrupted)")),
    encoders=("image", "text"),
    adapts="the query tower's LayerNorms (image queries: every LayerNorm of the ViT; text queries: the "
           "text transformer blocks' LayerNorms, not ln_final)",
    description="cross-modal image-text retrieval"))

register_task(Task(
    "cir",
    (Direction("cir", "cir", "composed", "image", ("image", "text"), (1, 5, 10, 50),
               "Composed image retrieval (reference image and/or modification text corrupted)"),),
    encoders=("image", "text", "combiner"),
    adapts="the LayerNorms of both towers of the composed encoder (the image tower's, and the text transformer "
           "blocks'); the combiner and the gallery stay frozen",
    description="composed image retrieval: (reference image, modification text) -> target image"))


def all_directions() -> tuple[str, ...]:
    return tuple(_DIRECTIONS)


def direction(name: str) -> Direction:
    if name not in _DIRECTIONS:
        from .errors import UnknownNameError

        raise UnknownNameError("direction", name, _DIRECTIONS)
    return _DIRECTIONS[name]


def task_of(name: str) -> Task:
    return TASKS.get(direction(name).task)


def cfg_task(cfg: dict) -> Task:
    """The task of the grid's directions (``adapt.directions``; one task per pipeline)."""
    dirs = list(((cfg.get("adapt") or {}).get("directions")) or [])
    names = {direction(d).task for d in dirs}
    if len(names) > 1:
        raise ConfigError(f"params: adapt.directions {dirs} mixes tasks ({', '.join(sorted(names))}); a pipeline "
                          f"runs one task (each has its own dataset and gallery)")
    return TASKS.get(names.pop() if names else "image-text")


def is_cir(cfg: dict) -> bool:
    return cfg_task(cfg).name == "cir"


def recall_ks(name: str) -> tuple[int, ...]:
    return direction(name).recall_ks


def validate_tasks(cfg: dict) -> None:
    """adapt.directions within one task; a CIR grid on a CIR dataset (and the other way round)."""
    from .config import dataset_params

    task = cfg_task(cfg)
    d = dataset_params(cfg)
    dtask = d.get("task", "image-text") if isinstance(d, dict) else "image-text"
    if dtask not in TASKS:
        raise ConfigError(f"params: datasets.<{cfg['benchmark']}>.task is {dtask!r}; valid: {', '.join(TASKS.names())}")
    if dtask != task.name:
        raise ConfigError(f"params: benchmark {cfg['benchmark']!r} is a {dtask} dataset, but adapt.directions "
                          f"{list(cfg['adapt']['directions'])} are {task.name} directions; valid directions: "
                          f"{', '.join(x.name for x in TASKS.get(dtask).directions)}")
    if task.name == "cir":
        from .cir import validate_cir

        validate_cir(cfg)
