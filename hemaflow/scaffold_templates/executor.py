"""A hemaflow executor: a thread pool that keeps item order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from hemaflow import Executor, hookimpl


class TemplateComponent(Executor):
    """Run ``fn`` over items in ``workers`` threads (good for I/O-bound work); results in order.

    The recipe's ``executor: {uses: ...}``; steps call it through ``ctx.map``.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"workers": {"type": "integer", "minimum": 1, "default": 2}},
        "additionalProperties": False,
    }

    def map(self, fn, items, *, progress=None):
        items = list(items)
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=int(self.params["workers"])) as pool:
            out = []
            for result in pool.map(fn, items):  # pool.map yields in item order
                out.append(result)
                if progress is not None:
                    progress(1)
        return out


@hookimpl
def register_executors(register):
    register(TemplateComponent)
