"""Query corruptions: one registered function per corruption.

Image corruptions map (H, W, 3) uint8 arrays to arrays of the same shape and dtype; text
corruptions map a caption to a caption. Both take a severity/level and a seed, and are
deterministic given them.
"""

from .image import IMAGE_CORRUPTIONS, corrupt_image  # noqa: F401
from .text import TEXT_CORRUPTIONS, corrupt_text  # noqa: F401
