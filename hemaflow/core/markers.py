"""pluggy markers for the project name ``hemaflow``.

Plugins decorate their hook implementations with :data:`hookimpl`::

    from hemaflow import hookimpl

    @hookimpl
    def register_classifiers(register):
        register(MyClassifier)
"""

from __future__ import annotations

import pluggy

PROJECT = "hemaflow"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
