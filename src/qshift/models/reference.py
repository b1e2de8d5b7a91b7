"""``model.preprocess: reference`` — the TCR reference code's input pipeline, for any backbone.

The reference (github XLearning-SCU/2025-ICLR-TCR, ``data/__init__.py`` create_dataset and
``data/*_dataset.py``) feeds every backbone the same way:

- images: ``Image.open(path).convert('RGB')``, then ``Resize((s, s), BICUBIC)`` — a squash
  of the whole image to s x s, no centre crop — ``ToTensor()`` and ``Normalize`` with CLIP's
  mean/std; s = 224 for CLIP (``resize=224``), 384 for BLIP. Here s is the model's own input
  resolution (224 for ViT-B/16 CLIPs, 384 for BLIP ViT-B/16), so a model of another size still
  gets a valid input;
- captions: BLIP's ``pre_caption(caption, max_words=30)`` for every backbone (CLIP too):
  lowercase, ``. ! " ( ) * # : ; ~`` to spaces, runs of two or more whitespace characters to
  one space, stripped, at most 30 space-separated words (:func:`reference_pre_caption`;
  unlike :func:`qshift.models.hf.pre_caption` a single tab or newline inside survives, as there);
- CLIP in fp16 on CUDA: the reference converts CLIP's linear/conv weights to fp16 (LayerNorms
  compute in fp32; BLIP stays fp32). Here: ``torch.autocast(float16)`` around every CLIP encode
  on CUDA — the same fp16 matrix products, fp32 master weights (a documented deviation: not
  bit-identical to fp16-stored activations); a no-op on CPU.

``targetpad`` is CLIP4Cir's validation input pipeline (github ABaldrati/CLIP4Cir,
``data_utils.targetpad_transform`` with its default ``target_ratio`` 1.25), for the composed
image retrieval presets: an image whose long / short side ratio is at least 1.25 is first
zero-padded (centred, integer padding on both sides) to that ratio, then resized (shorter side,
bicubic), centre-cropped to the model's input size and normalised with CLIP's mean/std; captions
and precision stay the loader's (CLIP4Cir validates in fp32).

``native`` (the default) keeps each loader's own preprocessing (open_clip's transforms, the
checkpoint's transformers processor).
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch

from ..errors import ConfigError

PREPROCESS = ("native", "reference", "targetpad")
TARGET_RATIO = 1.25  # CLIP4Cir's default --target-ratio
REFERENCE_MAX_WORDS = 30
# the reference's normalisation constants (CLIP's), for every backbone
REFERENCE_MEAN = (0.48145466, 0.4578275, 0.40821073)
REFERENCE_STD = (0.26862954, 0.26130258, 0.27577711)
_PUNCT = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def reference_pre_caption(caption: str, max_words: int = REFERENCE_MAX_WORDS) -> str:
    """The reference's ``pre_caption`` (its data/utils.py), behaviour for behaviour."""
    caption = _SPACES.sub(" ", _PUNCT.sub(" ", str(caption).lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


def reference_transform(size: int) -> Callable:
    """PIL image -> tensor: squash to size x size (bicubic), ToTensor, CLIP mean/std."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return transforms.Compose([transforms.Resize((size, size), interpolation=InterpolationMode.BICUBIC),
                               transforms.ToTensor(), transforms.Normalize(REFERENCE_MEAN, REFERENCE_STD)])


def pad_to_ratio(image, ratio: float = TARGET_RATIO):
    """A PIL image zero-padded, centred, to ``ratio`` (long / short side) when it is at least that
    elongated; otherwise unchanged (CLIP4Cir's TargetPad)."""
    from torchvision.transforms import functional as F

    w, h = image.size
    if max(w, h) / min(w, h) < ratio:
        return image
    side = max(w, h) / ratio  # the short side the padded image needs
    dx, dy = max(int((side - w) / 2), 0), max(int((side - h) / 2), 0)
    return F.pad(image, [dx, dy, dx, dy], 0, "constant")


class _PadToRatio:  # a class, not a lambda: DataLoader workers may need to pickle the transform
    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, image):
        return pad_to_ratio(image, self.ratio)


def _rgb(image):
    return image.convert("RGB")


def targetpad_transform(size: int, ratio: float = TARGET_RATIO) -> Callable:
    """PIL image -> tensor: :func:`pad_to_ratio`, resize the shorter side to ``size`` (bicubic),
    centre crop, RGB, ToTensor, CLIP mean/std."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    return transforms.Compose([_PadToRatio(ratio), transforms.Resize(size, interpolation=InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), _rgb, transforms.ToTensor(),
                               transforms.Normalize(REFERENCE_MEAN, REFERENCE_STD)])


def input_size(model) -> int:
    """The model's square input resolution (open_clip: visual.image_size; transformers:
    config.vision_config.image_size)."""
    visual = getattr(model.module, "visual", None)
    if visual is not None and getattr(visual, "image_size", None) is not None:
        size = visual.image_size
    else:
        size = model.module.config.vision_config.image_size
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise ConfigError(f"model.preprocess 'reference' squashes to a square, but model {model.name!r} takes "
                              f"{tuple(size)} inputs; use model.preprocess: native")
        size = size[0]
    return int(size)


class _ReferenceTokenize:
    def __init__(self, tokenize: Callable[[Sequence[str]], torch.Tensor]):
        self.inner = tokenize

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.inner([reference_pre_caption(t) for t in texts])


def apply(model, preprocess: str):
    """``model`` with the ``preprocess`` pipeline (``native`` leaves it as loaded)."""
    if preprocess not in PREPROCESS:
        raise ConfigError(f"model.preprocess {preprocess!r}; valid: {', '.join(PREPROCESS)}")
    if preprocess == "native":
        return model
    if preprocess == "targetpad":  # images only: captions and precision stay the loader's
        transform = targetpad_transform(input_size(model))
        model.image_transform = lambda: transform
        model.preprocess = preprocess
        return model
    transform = reference_transform(input_size(model))
    model.image_transform = lambda: transform  # instance attributes shadow the loader's methods
    if hasattr(model, "clean_caption"):  # transformers models clean inside tokenize (BLIP: pre_caption)
        model.clean_caption = reference_pre_caption
    else:
        model.tokenize = _ReferenceTokenize(model.tokenize)
    from .hf import BlipItcModel

    model.autocast_dtype = None if isinstance(model, BlipItcModel) else torch.float16  # the reference's BLIP: fp32
    model.preprocess = preprocess
    return model
