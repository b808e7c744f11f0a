"""Every registered built-in component passes the public conformance kit (hemaflow.testing).

Parametrized over the registry, one test per (component, check), like timm over ``list_models()``
and scikit-learn's ``parametrize_with_checks``. Built-ins run with the fast settings of
:mod:`hemaflow.testing.builtin`; the few that need data or files this machine may not have
(BCCD, the WBC crops, a SAM checkpoint) run their static checks only and skip the run checks
with the reason.
"""

from __future__ import annotations

import pytest

from hemaflow.core.component import KINDS
from hemaflow.core.plugins import build_registry, make_plugin_manager
from hemaflow.testing import iter_checks, parametrize_with_checks
from hemaflow.testing.builtin import SETTINGS

REGISTRY = build_registry(make_plugin_manager(entry_points=False))
CLASSES = [entry.cls for _, _, entry in REGISTRY.entries()]


@parametrize_with_checks(CLASSES)
def test_builtin_conforms(check):
    check()


def test_every_kind_has_a_builtin_that_the_kit_runs():
    from hemaflow.core.validate import module_available

    ran = {cls.kind for cls in CLASSES if (SETTINGS.get(cls.name) or (None, None, None))[2] is None}
    # the one tracker needs MLflow, an optional extra ('.[dev]' alone does not install it)
    assert ran == set(KINDS) - (set() if module_available("mlflow") else {"tracker"})


def test_run_checks_are_skipped_only_with_a_reason():
    for cls in CLASSES:
        names = [c.name for c in iter_checks(cls)]
        if cls.kind in ("reporter", "executor", "tracker"):
            assert names[-1] in ("check_reporter_writes", "check_executor_map", "check_tracker_track")
        else:
            assert {"check_run_outputs", "check_deterministic", "check_cache_round_trip"} <= set(names), cls.name


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_fast_settings_name_a_registered_builtin(name):
    assert name in REGISTRY.all_names()
