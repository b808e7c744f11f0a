"""Loading recipes: YAML with line/column tracking, duplicate keys, ``extends``, ``--set``.

``extends`` deep-merges: maps merge, lists and scalars replace. To drop an inherited key, give
it the value ``!reset`` (the tag Docker Compose uses for the same thing), in a recipe or on the
command line (``--set steps.encoder=!reset``)::

    extends: mil_multimodal.yaml
    steps:
      encoder: !reset                  # no frozen encoder step
      mil: {inputs: {embeddings: !reset}}
      segment: {with: !reset {min_area: 80}}   # replace the inherited with: instead of merging

``!reset VALUE`` replaces the inherited value by ``VALUE`` as a whole (no deep merge). When an
extending recipe (or ``--set``) changes a step's ``uses:``, the parent's ``with:`` keys that the
new component does not accept are dropped: they were another component's parameters (the
classical segmenter's ``min_area`` means nothing to ``deeplabv3``). Keys it shares, e.g. the
``epochs`` every MIL aggregator takes, are kept, so an ablation that swaps only ``uses:`` keeps
the parent's training setup. ``resolve --origins`` notes every drop; ``with: !reset {...}``
drops them all.

Every value of a loaded recipe is located by its JSON pointer (``/steps/mil/with/epochs``) in
an :class:`Origin`: the file, line and column it came from, a ``--set`` override, or a schema
default. Errors and ``hemaflow resolve --origins`` use these locations.

Limits (each a one-line :class:`RecipeError` with the location, never a memory blow-up or a
``RecursionError``): a recipe file is a regular file of at most :data:`MAX_RECIPE_BYTES`; maps and
lists nest at most :data:`MAX_DEPTH` levels; YAML aliases expand to at most :data:`MAX_VALUES`
values ("billion laughs"); an ``extends`` chain is at most :data:`MAX_EXTENDS_DEPTH` recipes deep
and reads at most :data:`MAX_EXTENDS_FILES` files. A file that is not a recipe (binary, not a
mapping, mostly unknown top-level keys) is reported once as "not a hemaflow recipe", without
echoing its content.
"""

from __future__ import annotations

import copy
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from hemaflow.core.errors import Problem, RecipeError, UsageError
from hemaflow.core.recipe_yaml import (  # noqa: F401  (parsing one file; imported from here too)
    escape, Origin, parse_yaml, pointer, Replace, RESET, Source, _parse, _without_resets)

MAX_RECIPE_BYTES = 1 << 20  # 1 MiB; the largest shipped recipe is a few KiB
MAX_EXTENDS_DEPTH = 32
MAX_EXTENDS_FILES = 256
RECIPE_SUFFIXES = (".yaml", ".yml")


def display_path(path: Path) -> str:
    """Show ``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _not_a_recipe(shown: str, why: str, line: int = 0, col: int = 0) -> RecipeError:
    return RecipeError(Problem(shown, line, col, "", f"not a hemaflow recipe: {why}"))


def _read_text(path: Path, shown: str) -> str:
    """The text of a recipe file: a regular UTF-8 file of at most MAX_RECIPE_BYTES."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise RecipeError(Problem(shown, 0, 0, "", "file not found")) from None
    except OSError as exc:
        raise RecipeError(Problem(shown, 0, 0, "", f"cannot read file: {exc.strerror or exc}")) from None
    if stat.S_ISDIR(st.st_mode):
        raise RecipeError(Problem(shown, 0, 0, "", "is a directory, not a recipe file"))
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO (would block), a socket
        raise _not_a_recipe(shown, "not a regular file (a device, pipe or socket); a recipe is a YAML file")
    too_big = f"larger than {MAX_RECIPE_BYTES // 1024} KiB (recipes are a few KiB of YAML)"
    if st.st_size > MAX_RECIPE_BYTES:
        raise _not_a_recipe(shown, too_big)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RECIPE_BYTES + 1)  # /proc files report size 0
    except OSError as exc:
        raise RecipeError(Problem(shown, 0, 0, "", f"cannot read file: {exc.strerror or exc}")) from None
    if len(raw) > MAX_RECIPE_BYTES:
        raise _not_a_recipe(shown, too_big)
    if b"\0" in raw and path.suffix.lower() not in RECIPE_SUFFIXES:
        before = raw[:raw.index(b"\0")]
        line, col = before.count(b"\n") + 1, len(before) - (before.rfind(b"\n") + 1) + 1
        raise _not_a_recipe(shown, "it contains NUL bytes (a binary file?)", line, col)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[:exc.start]
        line, col = before.count(b"\n") + 1, len(before) - (before.rfind(b"\n") + 1) + 1
        raise RecipeError(Problem(shown, line, col, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the "
                                                        f"recipe as UTF-8")) from None


def _recipe_keys() -> set[str]:
    from hemaflow.core.schema import base_schema

    return set(base_schema()["properties"])


def read_source(path: Path) -> Source:
    """Read and parse one recipe file (no ``extends``); raise RecipeError.

    A file that does not look like a recipe (malformed YAML in a file not named ``.yaml``/``.yml``,
    a top level that is not a mapping, mostly unknown top-level keys) gives one "not a hemaflow
    recipe" problem that never quotes the file (``extends: /etc/shadow`` must not print it).
    """
    shown = display_path(path)
    text = _read_text(path, shown)
    yaml_file = path.suffix.lower() in RECIPE_SUFFIXES
    try:
        src, problems = _parse(text, shown)
    except RecipeError as exc:
        if yaml_file:
            raise
        p = exc.problems[0]
        raise _not_a_recipe(shown, f"not valid YAML (and not a {'/'.join(RECIPE_SUFFIXES)} file)", p.line,
                            p.col) from None
    if src.data is None:
        src.data = {}
    data = src.data
    if not isinstance(data, dict):
        kind = {str: "text", list: "a list"}.get(type(data), type(data).__name__)
        raise _not_a_recipe(shown, f"the top level is {kind}, not a mapping of recipe keys "
                                   f"({', '.join(sorted(_recipe_keys()))})", 1, 1)
    known = _recipe_keys()
    unknown = [k for k in data if k not in known]
    if unknown and (len(unknown) == len(data) and (len(unknown) > 1 or not yaml_file)
                    or len(unknown) >= 3 and len(unknown) > len(data) - len(unknown)):
        raise _not_a_recipe(shown, f"{len(unknown)} of its {len(data)} top-level keys are not recipe keys "
                                   f"({', '.join(sorted(known))})", 1, 1)
    if problems:
        raise RecipeError(problems)
    return src


@dataclass
class Recipe:
    """A recipe after ``extends`` and overrides: ``data`` plus the origin of every value."""

    path: Path
    data: dict[str, Any]
    origins: dict[str, Origin] = field(default_factory=dict)
    key_origins: dict[str, Origin] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a parent's with: keys dropped because uses: changed
    replaced_uses: dict[str, "ReplacedUses"] = field(default_factory=dict)  # step id -> its uses: change

    @property
    def name(self) -> str:
        return str(self.data.get("name") or self.path.stem)

    def locate(self, ptr: str, *, key: bool = False) -> Origin:
        """Best origin for ``ptr``: the key (for unknown keys) or the value, else the nearest parent."""
        p = ptr
        while True:
            if key and p in self.key_origins:
                return self.key_origins[p]
            if p in self.origins:
                return self.origins[p]
            if p in self.key_origins:
                return self.key_origins[p]
            if not p:
                return Origin(display_path(self.path))
            p = p.rsplit("/", 1)[0]


def _descendants(origins: dict[str, Origin], ptr: str) -> list[str]:
    return [p for p in origins if p.startswith(ptr + "/")]


def _merge(base: Any, over: Any, ptr: str, origins: dict[str, Origin], key_origins: dict[str, Origin],
           src: Source | None, set_origin: Origin | None = None) -> Any:
    """Deep merge ``over`` into ``base``: maps merge, scalars and lists replace, ``!reset`` removes."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            child = ptr + "/" + escape(k)
            if v is RESET:
                out.pop(k, None)
                _forget(origins, key_origins, child)
                continue
            if isinstance(v, Replace):  # key: !reset VALUE: the inherited value goes, VALUE as a whole
                _forget(origins, key_origins, child)
                out[k] = _merge(None, v.value, child, origins, key_origins, src, set_origin)
            else:
                out[k] = _merge(base.get(k), v, child, origins, key_origins, src, set_origin)
            if src is not None and child in src.keys:
                key_origins[child] = src.keys[child]
        if src is not None and ptr in src.values:
            origins.setdefault(ptr, src.values[ptr])
        return out
    over = _without_resets(over)
    if src is None and set_origin is None:  # already located (a parent recipe)
        return copy.deepcopy(over)
    for p in _descendants(origins, ptr):
        del origins[p]
    for p in _descendants(key_origins, ptr):
        del key_origins[p]
    if src is not None:
        for p, o in src.values.items():
            if p == ptr or p.startswith(ptr + "/"):
                origins[p] = o
        for p, o in src.keys.items():
            if p.startswith(ptr + "/"):
                key_origins[p] = o
    elif set_origin is not None:
        origins[ptr] = set_origin
        key_origins[ptr] = set_origin
    return copy.deepcopy(over)


def _forget(origins: dict[str, Origin], key_origins: dict[str, Origin], ptr: str) -> None:
    for d in (origins, key_origins):
        for p in [ptr, *_descendants(d, ptr)]:
            d.pop(p, None)


@dataclass
class ReplacedUses:
    """A step whose ``uses:`` a later layer (a child recipe, ``--set``) changed.

    ``inherited`` maps the pointer of each ``with:`` key the step had from before the change to
    that value's origin then; validation drops those the new component does not accept (they were
    another component's parameters) as long as no later layer set them again.
    """

    old: str
    new: str
    changed_at: str
    inherited: dict[str, Origin]


def _note_replaced_uses(base: dict[str, Any], over: dict[str, Any], recipe: Recipe,
                        uses_origin: Callable[[str], Any]) -> None:
    """Record (in ``recipe.replaced_uses``) every step whose ``uses:`` ``over`` changes from ``base``'s."""
    bsteps, osteps = base.get("steps"), over.get("steps")
    if not isinstance(bsteps, dict) or not isinstance(osteps, dict):
        return
    for sid, ostep in osteps.items():
        bstep = bsteps.get(sid)
        if not isinstance(ostep, dict) or not isinstance(bstep, dict) or not isinstance(bstep.get("with"), dict):
            continue
        new = ostep.get("uses")
        new = new.value if isinstance(new, Replace) else new
        old = bstep.get("uses")
        if not isinstance(new, str) or new == old:
            continue
        ptr = pointer("steps", sid, "with")
        owith = ostep.get("with")
        own_keys = set(owith) if isinstance(owith, dict) and not isinstance(owith, Replace) else set()
        inherited = {f"{ptr}/{escape(k)}": recipe.locate(f"{ptr}/{escape(k)}") for k in bstep["with"]
                     if k not in own_keys}
        recipe.replaced_uses[sid] = ReplacedUses(str(old), new, str(uses_origin(pointer("steps", sid, "uses"))),
                                                 inherited)


def _short_chain(paths: list[Path]) -> str:
    shown = [display_path(p) for p in paths]
    if len(shown) > 6:
        shown = [*shown[:3], f"... ({len(shown) - 5} more)", *shown[-2:]]
    return " -> ".join(shown)


def _load_with_extends(path: Path, stack: list[Path], recipe: Recipe) -> dict[str, Any]:
    rpath = path.resolve()
    if rpath in stack:
        chain = " -> ".join(display_path(p) for p in [*stack[stack.index(rpath):], rpath])
        raise RecipeError(Problem(display_path(stack[-1]), 0, 0, "/extends", f"extends cycle: {chain}"))
    src = read_source(path)
    recipe.files.append(src.path)
    data = src.data
    parents = data.get("extends")
    merged: dict[str, Any] = {}
    if parents is not None:
        plist = [parents] if isinstance(parents, str) else parents
        if not isinstance(plist, list) or not all(isinstance(p, str) for p in plist):
            o = src.values.get("/extends", Origin(src.path))
            raise RecipeError(Problem(src.path, o.line, o.col, "/extends",
                                      "must be a path or a list of paths (relative to this recipe)"))
        for i, parent in enumerate(plist):
            ppath = (path.parent / parent)
            o = src.values.get("/extends" if isinstance(parents, str) else f"/extends/{i}", Origin(src.path))
            try:
                found = ppath.exists()
            except (OSError, ValueError):  # a NUL in the name, a name too long
                found = False
            if not found:
                shown = display_path(ppath)
                raise RecipeError(Problem(src.path, o.line, o.col, "/extends",
                                          f"extended recipe {parent!r} not found (looked for "
                                          f"{shown if shown.isprintable() else repr(shown)})"))
            if ppath.resolve() in [*stack, rpath]:
                chain = [*stack, rpath]
                chain = " -> ".join(display_path(q) for q in [*chain[chain.index(ppath.resolve()):], ppath.resolve()])
                raise RecipeError(Problem(src.path, o.line, o.col, "/extends", f"extends cycle: {chain}"))
            if len(stack) + 1 >= MAX_EXTENDS_DEPTH:
                raise RecipeError(Problem(src.path, o.line, o.col, "/extends",
                                          f"extends chain deeper than {MAX_EXTENDS_DEPTH} recipes: "
                                          f"{_short_chain([*stack, rpath, ppath])}"))
            if len(recipe.files) >= MAX_EXTENDS_FILES:
                raise RecipeError(Problem(src.path, o.line, o.col, "/extends",
                                          f"extends reads more than {MAX_EXTENDS_FILES} recipe files (the same parents "
                                          f"extended many times over?)"))
            parent_data = _load_with_extends(ppath, [*stack, rpath], recipe)
            _note_replaced_uses(merged, parent_data, recipe, recipe.origins.get)
            merged = _merge(merged, parent_data, "", recipe.origins, recipe.key_origins, None)
    own = {k: v for k, v in data.items() if k != "extends"}
    _note_replaced_uses(merged, own, recipe, src.values.get)
    # re-apply this file's locations for everything it defines
    return _merge_source(merged, own, src, recipe)


def _merge_source(merged: dict[str, Any], own: dict[str, Any], src: Source, recipe: Recipe) -> dict[str, Any]:
    return _merge(merged, own, "", recipe.origins, recipe.key_origins, src)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``KEY=VALUE`` (dotted key, YAML value: the same parser and limits as a recipe file)."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE, e.g. --set steps.mil.with.epochs=3")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {text!r}: the key must be a dotted path like steps.mil.with.epochs")
    try:
        src, problems = _parse(raw, "--set")
    except RecipeError as exc:
        p = exc.problems[0]
        where = f" at column {p.col}" if p.line == 1 else f" at line {p.line}" if p.line else ""
        raise UsageError(f"--set {text!r}: the value is not valid YAML{where}: {p.message}") from None
    if problems:
        raise UsageError(f"--set {text!r}: {problems[0].message}")
    return key.split("."), src.data


def apply_override(recipe: Recipe, text: str) -> None:
    """Apply one ``--set KEY=VALUE`` to ``recipe`` in place."""
    parts, value = parse_override(text)
    origin = Origin(f"--set {text}")
    node = recipe.data
    ptr = ""
    if value is RESET:  # remove the key if it is there; never create its parents
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(parts[-1], None)
        _forget(recipe.origins, recipe.key_origins, pointer(*parts))
        return
    replace = isinstance(value, Replace)  # KEY=!reset VALUE: set VALUE as a whole, no merge
    if replace:
        value = value.value
    for part in parts[:-1]:
        ptr += "/" + escape(part)
        if not isinstance(node.get(part), dict):
            if part in node and node[part] is not None:
                raise UsageError(f"--set {text!r}: {'.'.join(parts[:parts.index(part) + 1])} is not a mapping")
            node[part] = {}
            recipe.origins[ptr] = origin
        node = node[part]
    last = parts[-1]
    ptr += "/" + escape(last)
    old = node.get(last)
    if replace:
        _forget(recipe.origins, recipe.key_origins, ptr)
    node[last] = _merge(old, value, ptr, recipe.origins, recipe.key_origins, None, origin) \
        if isinstance(old, dict) and isinstance(value, dict) and not replace \
        else _merge(None, value, ptr, recipe.origins, recipe.key_origins, None, origin)
    if isinstance(value, dict):
        for p in _flat_pointers(value, ptr):
            recipe.origins.setdefault(p, origin)
            recipe.key_origins.setdefault(p, origin)


def _flat_pointers(d: Any, ptr: str) -> list[str]:
    out = [ptr]
    if isinstance(d, dict):
        for k, v in d.items():
            out += _flat_pointers(v, ptr + "/" + escape(k))
    return out


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe file, resolve ``extends`` (deep merge) and apply ``--set`` overrides.

    Defaults are not filled in here (see :func:`hemaflow.core.validate.resolve`).

    Example:
        >>> r = load_recipe("recipes/mil_multimodal.yaml", ["steps.mil.with.epochs=3"])  # doctest: +SKIP
    """
    path = Path(path)
    recipe = Recipe(path=path, data={})
    recipe.data = _load_with_extends(path, [], recipe)
    for text in overrides:
        parts, value = parse_override(text)
        for part in reversed(parts):
            value = {part: value}
        _note_replaced_uses(recipe.data, value, recipe, lambda p, _t=text: f"--set {_t}")
        apply_override(recipe, text)
    return recipe
