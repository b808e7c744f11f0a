"""Moved to :mod:`hemaflow.lib.mil_training` (library code, not a component); this old path is the same module."""

import sys

from hemaflow.lib import mil_training

sys.modules[__name__] = mil_training
