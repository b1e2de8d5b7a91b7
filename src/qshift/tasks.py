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
  Multi-modal query streams (``streams.cir``, :mod:`qshift.cir_streams`) through its hooks.
- ``video-audio`` — video-audio retrieval (:mod:`qshift.va`, REST's third task): ``v2a`` (video
  queries, audio gallery) and ``a2v`` (audio queries, video gallery), R@1/5/10. Query shift:
  ``v2a`` queries are shifted by the ``video`` registry (:mod:`qshift.corrupt.video`: every image
  corruption applied per frame, seeded per (clip, frame)), ``a2v`` queries by the ``audio``
  registry (:mod:`qshift.corrupt.audio`: gaussian noise and added environmental noise at READ's
  five severities). TTA adapts the query tower's LayerNorms (``norm_layers("video")`` /
  ``norm_layers("audio")``); the gallery tower and the gallery embeddings stay frozen.

  A video-audio model (:class:`qshift.models.video_audio.VideoAudioModel`; the built-in two-tower
  :mod:`qshift.models.tiny_va` and the CAV-MAE loader implement it) has::

      encode_video(video: FloatTensor[B, T, 3, H, W]) -> FloatTensor[B, D]   # L2-normalised
      encode_audio(fbank: FloatTensor[B, n_frames, n_mels]) -> FloatTensor[B, D]  # L2-normalised
      video_transform(frames: uint8 ndarray[T, H, W, 3]) -> FloatTensor[T, 3, H, W]
      audio_transform(wave: float32 ndarray[samples], sample_rate: int) -> FloatTensor[n_frames, n_mels]
      norm_layers(modality)  # "video" | "audio": the LayerNorms TTA adapts when that side queries

  and the :class:`~qshift.models.base.RetrievalModel` attributes every method reads (``name``,
  ``module``, ``device``, ``preprocess``, ``encode(modality, batch)`` with modality ``video`` or
  ``audio``). Clips on disk: :mod:`qshift.va` (a *clip set* folder: ``clips.json`` +
  ``frames.npy`` uint8 [N, T, H, W, 3] and/or ``audio.npy`` float32 [N, samples], memory-mapped,
  read in batches).

Adding a task = one module that registers a :class:`Task` here (its directions, its query
loader and gallery) plus its data adapter. A task that needs its own code path in a shared
function declares a *hook* (``Task.hooks``: name -> ``"module:function"``, imported when first
used) and the shared function asks :func:`hook` for it — one generic line there instead of an
``if direction == ...`` chain. Hook names (and the functions that consult them):
``validate`` (config.validate), ``query_cells`` / ``query_set_path`` / ``queries_path`` /
``stream_path`` (config), ``query_corruptions`` / ``load_queries`` (cells), ``query_owner`` / ``query_loader`` /
``check_gallery`` (gallery), ``stream_info`` / ``stream_domains`` (streams), ``job_model`` /
``check_queries`` (cells: the model an adapt job adapts, a cell's queries against the gallery),
``scoring`` (adapt.run_stream: a benchmark's own scoring rules over a query set), ``tune_gallery`` /
``tune_queries`` (tune.run_tune: the validation split's gallery and validation-only query sets), ``prepare`` /
``pretrain`` / ``encode_gallery`` / ``examples`` (the stage CLIs), and ``code`` / ``code_extra``
(extra files, and a function of the params, a cell's fingerprint covers). A pipeline runs one task (``adapt.directions`` may
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
    hooks: dict[str, Callable | str] = field(default_factory=dict)  # name -> callable or "module:function"


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
    description="composed image retrieval: (reference image, modification text) -> target image",
    # multi-modal query streams (streams.cir; qshift.cir_streams); triplet queries, the composed encoder and the
    # real benchmarks' scoring rules (qshift.cir)
    hooks={"validate": "qshift.cir_streams:validate", "stream_path": "qshift.cir_streams:stream_path",
           "stream_info": "qshift.cir_streams:stream_info", "stream_domains": "qshift.cir_streams:stream_domains",
           "query_owner": "qshift.cir:query_owner", "query_loader": "qshift.cir:loader_hook",
           "load_queries": "qshift.cir:load_queries", "query_corruptions": "qshift.cir_plan:query_corruptions",
           "job_model": "qshift.cir:job_model", "check_queries": "qshift.cir:check_queries",
           "scoring": "qshift.cir:scoring", "code_extra": "qshift.cir_plan:code_extra",
           "tune_gallery": "qshift.cir:tune_gallery", "tune_queries": "qshift.cir:tune_queries",
           "code": ("cir.py", "cir_plan.py", "models/composed.py")}))


register_task(Task(
    "video-audio",
    (Direction("v2a", "video-audio", "video", "audio", ("video",), (1, 5, 10),
               "Video-to-audio retrieval (video queries corrupted)"),
     Direction("a2v", "video-audio", "audio", "video", ("audio",), (1, 5, 10),
               "Audio-to-video retrieval (audio queries corrupted)")),
    encoders=("video", "audio"),
    adapts="the query tower's LayerNorms (video queries: the video tower's; audio queries: the audio tower's); "
           "the other tower and the gallery embeddings stay frozen",
    description="video-audio retrieval: a clip's frames <-> its soundtrack",
    # planning (torch-free: qshift.va_plan) and the jobs' clip sets, encoders and stages (qshift.va)
    hooks={name: f"qshift.va_plan:{name}" for name in (
        "validate", "query_cells", "query_set_path", "queries_path", "stream_path", "query_corruptions")}
    | {name: f"qshift.va:{name}" for name in (
        "load_queries", "query_owner", "query_loader", "check_gallery", "stream_info", "prepare", "pretrain",
        "encode_gallery", "examples", "tune_gallery", "tune_queries")}
    | {"stream_domains": "qshift.va_plan:reported_domains"}
    | {"code": ("va.py", "va_plan.py", "corrupt/video.py", "corrupt/audio.py", "models/video_audio.py",
                "models/tiny_va.py")}))


def _resolve(value):
    if isinstance(value, str) and ":" in value:
        import importlib

        module, _, fn = value.partition(":")
        return getattr(importlib.import_module(module), fn)
    return value


def hook(direction_or_task: str, name: str):
    """The task's hook ``name`` (a direction's task, or a task by name), or None when it has none
    (the shared code path then applies: image-text, cir)."""
    task = TASKS.get(direction_or_task) if direction_or_task in TASKS else task_of(direction_or_task)
    value = task.hooks.get(name)
    return None if value is None else _resolve(value)


def code_files(task_name: str) -> tuple[str, ...]:
    """The task's own code (``Task.hooks["code"]``) as repository paths, with tasks.py where it
    has any: what its cells' fingerprints hash beyond the adapt code (qshift.cells.task_code), and
    so what its adapt and tune stages list as DVC deps (qshift.pipeline); () for image-text."""
    files = TASKS.get(task_name).hooks.get("code") or ()
    return ("src/qshift/tasks.py", *(f"src/qshift/{f}" for f in files)) if files else ()


def modality_task(modality: str) -> Task | None:
    """The task whose directions query ``modality`` (video, audio), or None for image/text/composed."""
    for task in (TASKS.get(n) for n in TASKS.names()):
        if task.name != "image-text" and any(d.query_modality == modality for d in task.directions):
            return task
    return None


def dataset_task(cfg: dict) -> str:
    """The task the benchmark's dataset entry declares (``datasets.<name>.task``, default image-text)."""
    from .config import dataset_params

    d = dataset_params(cfg)
    return d.get("task", "image-text") if isinstance(d, dict) else "image-text"


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
        from .cir_plan import validate_cir

        validate_cir(cfg)
    check = hook(task.name, "validate")
    if check is not None:
        check(cfg)
