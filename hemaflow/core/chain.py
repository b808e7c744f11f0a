"""Fused per-image chains: consecutive per-item steps run item by item in one executor task.

A component opts in by subclassing :class:`PerItem` (besides its kind's base class) and
splitting its ``run`` into three parts:

* ``items(ctx, **inputs)`` -> list: the per-item work of its ``item_input`` input (e.g. one
  image's array per element), read from the input artifact;
* ``run_item(item)`` -> the item's result in memory, or ``None`` / a :class:`Skipped` record
  when the item is left out (``on_error: skip``, an unreadable file: the record says why); a
  pure function of the item and the component's parameters, picklable;
* ``assemble(ctx, results, **inputs)`` -> the step's outputs (written below ``ctx.workdir``);
  ``results`` holds ``run_item``'s result per item in item order, ``None`` or the
  :class:`Skipped` record for left-out items (``assemble`` warns, or raises for ``stop``).

A step that follows another in a chain may also define

* ``side(ctx, **inputs)`` -> what its items need from its *other* inputs (those that finished
  before the chain, e.g. the image paths of a cell extractor whose items are masks); called
  once in the main process, passed to every task (keep it small: it is pickled per task);
* ``follow(result, side)`` -> its item made from the previous chain step's ``run_item`` result
  (default: the result itself), or ``None`` when it has no such item (e.g. an image its other
  input lacks): then the item is absent from this step's ``results``, as it is absent from
  the items ``items`` reads back from the artifact.

A component whose ``items`` needs its whole item input (a stain normalizer choosing its
reference among the images) sets ``can_follow = False``: it may head a chain, never follow.

The unfused ``run`` is ``assemble(ctx, ctx.map(run_item, items(ctx, ...)), ...)``. A chain is
a maximal run of consecutive per-item steps, none of them cached, where each step's
``item_input`` is the previous step's output named ``item_output`` (every other input comes
from a step that finished before the chain). The runner then calls ``items`` of the first step
once, maps :func:`run_chain_item` over the items (one executor task per item runs every step
of the chain on it, passing the results in memory) and calls each step's ``assemble`` with
its results, then commits each step's entry exactly as the unfused path would: same keys,
same ``assemble`` code, so the same bytes. The contract that makes this exact: the items the
next step reads back from the committed artifact equal, item for item, the non-``None``
results of ``run_item`` passed through ``follow`` (an item may hold an array where ``items``
holds the path of the same array written losslessly; checked by tests/core/test_fused_chain.py
and tests/plugins/test_fused_components.py on the built-in components).

``HEMAFLOW_FUSE=0`` (or the runner's ``fuse=False``) turns fusion off.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Sequence


class Skipped(dict):
    """A ``run_item`` result for an item that is left out, holding what ``assemble`` needs to
    say why (e.g. ``file`` and ``error``): later chain steps never see the item."""


def left_out(result: Any) -> bool:
    """True for a ``run_item`` result that is no result (``None`` or :class:`Skipped`)."""
    return result is None or isinstance(result, Skipped)


class PerItem:
    """Mixin of a step component whose work is one independent task per item (see module doc)."""

    item_input: ClassVar[str] = "images"  # the input split into items
    item_output: ClassVar[str] = ""  # the output the next chain step's items come from ("": the first)
    item_description: str = ""  # the progress bar's label (default: the step id)
    can_follow: ClassVar[bool] = True  # False: items() needs its whole input (it only heads a chain)

    def items(self, ctx: Any, **inputs: Any) -> list[Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def run_item(self, item: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def assemble(self, ctx: Any, results: list[Any], **inputs: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def side(self, ctx: Any, **inputs: Any) -> Any:
        """What ``follow`` needs from the inputs other than ``item_input`` (default: nothing)."""
        return None

    def follow(self, result: Any, side: Any) -> Any:
        """This step's item from the previous chain step's result (default: the result itself)."""
        return result

    def run(self, ctx: Any, **inputs: Any) -> dict[str, Any]:
        """The unfused path: items, one ``ctx.map`` task per item, assemble."""
        return self.assemble(ctx, _map_items(ctx, self, self.items(ctx, **inputs)), **inputs)


def item_label(item: Any, index: int) -> str:
    """A short name of an item for the executor's error messages (its first text element, or
    its ``image_id``/``path``/``id``), else ``#<index>``."""
    if isinstance(item, dict):
        for k in ("image_id", "path", "id"):
            if isinstance(item.get(k), (str, int)):
                return str(item[k])
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], (str, int)):
        return str(item[0])
    return f"#{index}"


def _map_items(ctx: Any, comp: PerItem, items: list[Any]) -> list[Any]:
    # the label first: the executors name a failed task by a tuple's first text element
    tasks = [(item_label(it, i), comp, it) for i, it in enumerate(items)]
    return ctx.map(_run_one, tasks, description=comp.item_description or getattr(ctx, "step_id", ""))


def _run_one(task: tuple[str, Any, Any]) -> Any:
    _, comp, item = task
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
    if not (is_per_item(prev) and is_per_item(nxt)) or not nxt.cls.can_follow:
        return False
    src, out = nxt.inputs[nxt.cls.item_input]
    if src != prev.id or out != out_name(prev.cls):
        return False
    return all(s in done for name, (s, _) in nxt.inputs.items() if name != nxt.cls.item_input)


def step_results(per_item: list[list[Any]], i: int) -> list[Any]:
    """Step ``i``'s ``run_item`` results in item order: the items that reached step ``i``
    (``None``/:class:`Skipped` where step ``i`` left it out), as the unfused ``ctx.map`` would
    return them."""
    return [r[i] for r in per_item if len(r) > i]


class ChainItemError(Exception):
    """A ``run_item`` of a chain failed: ``args`` = (index of the step in the chain, message,
    whether the error was a HemaflowError, i.e. a user's problem rather than a bug)."""


def run_chain_item(task: tuple[str, Sequence[PerItem], Sequence[Any], Any]) -> list[Any]:
    """One executor task: run every component of the chain on one item, in memory.

    ``task`` is (label, components, their ``side`` values, the first step's item). Returns the
    results per step, stopping after the first left-out result (a skipped item is not passed
    downstream, as in the unfused path where it is missing from the artifact) or where a
    step's ``follow`` gives no item (then the list ends before that step)."""
    _, comps, sides, item = task
    out: list[Any] = []
    for j, comp in enumerate(comps):
        try:
            if j:
                item = comp.follow(item, sides[j])
                if item is None:  # absent from this step's results (len(out) == j)
                    break
            item = comp.run_item(item)
        except ChainItemError:
            raise
        except Exception as exc:
            from hemaflow.core.errors import HemaflowError

            user = isinstance(exc, HemaflowError)
            raise ChainItemError(j, str(exc) if user else f"{type(exc).__name__}: {exc}", user) from None
        out.append(item)
        if left_out(item):
            break
    return out
