"""Moved to :mod:`hemaflow.lib.mil_bags` (library code, not a component); this old path is the same module."""

import sys

from hemaflow.lib import mil_bags

sys.modules[__name__] = mil_bags
