"""Fused per-image chains: consecutive per-item steps run item by item in one executor task.

A component opts in by subclassing :class:`PerItem` (besides its kind's base class) and
splitting its ``run`` into three parts:

* ``items(ctx, **inputs)`` -> list: the per-item work of its ``item_input`` input (e.g. one
  image's array per element), read from the input artifact;
* ``run_item(item)`` -> the item's result in memory, or ``None`` when the item is skipped
  (``on_error: skip``); a pure function of the item and the component's parameters, picklable;
* ``assemble(ctx, results, **inputs)`` -> the step's outputs (written below ``ctx.workdir``);
  ``results`` holds ``run_item``'s result per item in item order, ``None`` for skipped items.

The unfused ``run`` is ``assemble(ctx, ctx.map(run_item, items(ctx, ...)), ...)``. A chain is
a maximal run of consecutive per-item steps, none of them cached, where each step's
``item_input`` is the previous step's output named ``item_output`` (every other input comes
from a step that finished before the chain). The runner then calls ``items`` of the first step
once, maps :func:`run_chain_item` over the items (one executor task per item runs every step
of the chain on it, passing the results in memory) and calls each step's ``assemble`` with
its results, then commits each step's entry exactly as the unfused path would: same keys,
same ``assemble`` code, so the same bytes. The contract that makes this exact: the items the
next step reads back from the committed artifact equal, item for item, the non-``None``
results of ``run_item`` (checked by tests/core/test_fused_chain.py).

``HEMAFLOW_FUSE=0`` (or the runner's ``fuse=False``) turns fusion off.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Sequence


class PerItem:
    """Mixin of a step component whose work is one independent task per item (see module doc)."""

    item_input: ClassVar[str] = "images"  # the input split into items
    item_output: ClassVar[str] = ""  # the output the next chain step's items come from ("": the first)

    def items(self, ctx: Any, **inputs: Any) -> list[Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def run_item(self, item: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def assemble(self, ctx: Any, results: list[Any], **inputs: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def run(self, ctx: Any, **inputs: Any) -> dict[str, Any]:
        """The unfused path: items, one ``ctx.map`` task per item, assemble."""
        return self.assemble(ctx, _map_items(ctx, self, self.items(ctx, **inputs)), **inputs)


def _map_items(ctx: Any, comp: PerItem, items: list[Any]) -> list[Any]:
    return ctx.map(_run_one, [(comp, it) for it in items], description=getattr(ctx, "step_id", ""))


def _run_one(task: tuple[Any, Any]) -> Any:
    comp, item = task
    return comp.run_item(item)


def out_name(cls: type) -> str:
    """The output of a per-item step that the next chain step's items come from."""
    return getattr(cls, "item_output", "") or next(iter(cls.outputs))


def fusion_enabled(option: bool | None = None) -> bool:
    """``option`` when given, else ``HEMAFLOW_FUSE`` (default on; ``0``/``false``/``no``/``off``: off)."""
    if option is not None:
        return bool(option)
    return os.environ.get("HEMAFLOW_FUSE", "1").strip().lower() not in ("0", "false", "no", "off")


def is_per_item(spec: Any) -> bool:
    return isinstance(spec.cls, type) and issubclass(spec.cls, PerItem) and spec.cls.item_input in spec.inputs


def links(prev: Any, nxt: Any, done: set[str]) -> bool:
    """True when ``nxt`` may follow ``prev`` in one chain: its items come from ``prev``'s item
    output and its other inputs from steps finished before the chain started."""
    if not (is_per_item(prev) and is_per_item(nxt)):
        return False
    src, out = nxt.inputs[nxt.cls.item_input]
    if src != prev.id or out != out_name(prev.cls):
        return False
    return all(s in done for name, (s, _) in nxt.inputs.items() if name != nxt.cls.item_input)


def step_results(per_item: list[list[Any]], i: int) -> list[Any]:
    """Step ``i``'s ``run_item`` results in item order: the items that reached step ``i``
    (``None`` where step ``i`` skipped it), as the unfused ``ctx.map`` would return them."""
    return [r[i] for r in per_item if len(r) > i]


class ChainItemError(Exception):
    """A ``run_item`` of a chain failed: ``args`` = (index of the step in the chain, message)."""


def run_chain_item(task: tuple[Sequence[PerItem], Any]) -> list[Any]:
    """One executor task: run every component of the chain on one item, in memory.

    Returns the results per step, stopping after the first ``None`` (a skipped item is not
    passed downstream, as in the unfused path where it is missing from the artifact)."""
    comps, item = task
    out: list[Any] = []
    for j, comp in enumerate(comps):
        try:
            item = comp.run_item(item)
        except ChainItemError:
            raise
        except Exception as exc:
            from hemaflow.core.errors import HemaflowError

            msg = str(exc) if isinstance(exc, HemaflowError) else f"{type(exc).__name__}: {exc}"
            raise ChainItemError(j, msg) from None
        out.append(item)
        if item is None:
            break
    return out
