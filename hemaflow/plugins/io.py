"""The image helpers' earlier import path, kept for plugins written against it.

The helpers live in :mod:`hemaflow.lib.imageio` (documented in docs/reference.md, "Helpers");
this module re-exports them unchanged and defines nothing.
"""

from hemaflow.lib.imageio import *  # noqa: F401,F403
from hemaflow.lib.imageio import (  # noqa: F401  (the documented helpers, named for readers and linters)
    list_images, png_bytes, read_image, read_mask, to_rgb_uint8, write_png)
