"""Moved to :mod:`hemaflow.lib.mil_nets` (library code, not a component); this old path is the same module."""

import sys

from hemaflow.lib import mil_nets

sys.modules[__name__] = mil_nets
