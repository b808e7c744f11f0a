"""Loading recipes: YAML with line/column tracking, duplicate keys, ``extends``, ``--set``.

``extends`` deep-merges: maps merge, lists and scalars replace. To drop an inherited key, give
it the value ``!reset`` (the tag Docker Compose uses for the same thing), in a recipe or on the
command line (``--set steps.encoder=!reset``)::

    extends: mil_multimodal.yaml
    steps:
      encoder: !reset                  # no frozen encoder step
      mil: {inputs: {embeddings: !reset}}

Every value of a loaded recipe is located by its JSON pointer (``/steps/mil/with/epochs``) in
an :class:`Origin`: the file, line and column it came from, a ``--set`` override, or a schema
default. Errors and ``hemaflow resolve --origins`` use these locations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hemaflow.core.errors import Problem, RecipeError, UsageError


@dataclass(frozen=True)
class Origin:
    """Where a value came from: ``file:line:col``, ``--set KEY=VALUE`` or ``default``."""

    source: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        return f"{self.source}:{self.line}:{self.col}" if self.line else self.source


def escape(key: Any) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def pointer(*parts: Any) -> str:
    return "".join("/" + escape(p) for p in parts)


@dataclass
class Source:
    """One parsed YAML document with the location of every key and value."""

    path: str
    data: Any
    values: dict[str, Origin] = field(default_factory=dict)  # pointer -> origin of the value
    keys: dict[str, Origin] = field(default_factory=dict)  # pointer -> origin of the key


class _Reset:
    """The value of a ``!reset`` key: remove what ``extends`` (or the recipe) gave that key."""

    def __repr__(self) -> str:
        return "!reset"

    def __copy__(self) -> "_Reset":
        return self

    def __deepcopy__(self, memo: dict) -> "_Reset":
        return self


RESET = _Reset()


class _Loader(yaml.SafeLoader):
    """SafeLoader: never constructs Python objects, so recipes cannot execute code."""


_Loader.add_constructor("!reset", lambda loader, node: RESET)


_RESET_TAKES_NO_VALUE = "!reset removes the key and takes no value; write the value without !reset to set it"


def _reset_has_value(node: yaml.Node) -> bool:
    """True when a ``!reset`` node carries a value (``!reset 5``, ``!reset {a: 1}``)."""
    return bool(node.value) if isinstance(node.value, list) else str(node.value) not in ("", "null", "~", "Null", "NULL")


def _without_resets(value: Any) -> Any:
    """``value`` with every ``!reset`` key removed (there was nothing to reset)."""
    if isinstance(value, dict):
        return {k: _without_resets(v) for k, v in value.items() if v is not RESET}
    return value


def _mark(path: str, mark: yaml.Mark) -> Origin:
    return Origin(path, mark.line + 1, mark.column + 1)


def _convert(node: yaml.Node, path: str, ptr: str, src: Source, loader: _Loader, problems: list[Problem]) -> Any:
    src.values[ptr] = _mark(path, node.start_mark)
    if node.tag == "!reset":
        if _reset_has_value(node):
            problems.append(Problem(path, node.start_mark.line + 1, node.start_mark.column + 1, ptr,
                                    _RESET_TAKES_NO_VALUE))
        return RESET
    standard = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
    if type(node) in standard and node.tag != standard[type(node)]:
        raise yaml.constructor.ConstructorError(None, None, f"unsupported YAML tag {node.tag!r} (recipes hold "
                                                f"plain data only)", node.start_mark)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "!reset":
                problems.append(Problem(path, key_node.start_mark.line + 1, key_node.start_mark.column + 1, ptr,
                                        "!reset goes after a key (key: !reset), not in place of one"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(Problem(path, key_node.start_mark.line + 1, key_node.start_mark.column + 1, ptr,
                                        f"mapping keys must be strings; got {type(key).__name__}"))
                continue
            key = str(key) if not isinstance(key, str) else key
            child = ptr + "/" + escape(key)
            if key in first_seen:
                prev = first_seen[key].start_mark
                problems.append(Problem(path, key_node.start_mark.line + 1, key_node.start_mark.column + 1, child,
                                        f"duplicate key {key!r} (first defined at line {prev.line + 1})"))
                continue
            first_seen[key] = key_node
            src.keys[child] = _mark(path, key_node.start_mark)
            out[key] = _convert(value_node, path, child, src, loader, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            if v.tag == "!reset":
                problems.append(Problem(path, v.start_mark.line + 1, v.start_mark.column + 1, f"{ptr}/{i}",
                                        "!reset removes a key; it cannot be a list item"))
        return [_convert(v, path, f"{ptr}/{i}", src, loader, problems) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def parse_yaml(text: str, path: str) -> Source:
    """Parse YAML text into a :class:`Source`; malformed YAML and duplicate keys raise RecipeError."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        what = exc.problem or str(exc)
        if exc.context:
            what = f"{exc.context}, {what}"
        raise RecipeError(Problem(path, line, col, "", f"malformed YAML: {what}")) from None
    except yaml.YAMLError as exc:
        raise RecipeError(Problem(path, 0, 0, "", f"malformed YAML: {exc}")) from None
    finally:
        loader.dispose()
    src = Source(path, None)
    if node is None:
        src.data = {}
        return src
    problems: list[Problem] = []
    try:
        src.data = _convert(node, path, "", src, loader, problems)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise RecipeError(Problem(path, line, col, "", f"malformed YAML: {exc.problem or exc}")) from None
    if problems:
        raise RecipeError(problems)
    return src


def display_path(path: Path) -> str:
    """Show ``path`` relative to the working directory when it is below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def read_source(path: Path) -> Source:
    shown = display_path(path)
    if not path.exists():
        raise RecipeError(Problem(shown, 0, 0, "", "file not found"))
    if path.is_dir():
        raise RecipeError(Problem(shown, 0, 0, "", "is a directory, not a recipe file"))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(Problem(shown, 0, 0, "", f"cannot read file: {exc}")) from None
    src = parse_yaml(text, shown)
    if not isinstance(src.data, dict):
        raise RecipeError(Problem(shown, 1, 1, "", f"a recipe must be a mapping; got {type(src.data).__name__}"))
    return src


@dataclass
class Recipe:
    """A recipe after ``extends`` and overrides: ``data`` plus the origin of every value."""

    path: Path
    data: dict[str, Any]
    origins: dict[str, Origin] = field(default_factory=dict)
    key_origins: dict[str, Origin] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

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
            if not ppath.exists():
                o = src.values.get("/extends" if isinstance(parents, str) else f"/extends/{i}", Origin(src.path))
                raise RecipeError(Problem(src.path, o.line, o.col, "/extends",
                                          f"extended recipe {parent!r} not found (looked for {display_path(ppath)})"))
            parent_data = _load_with_extends(ppath, [*stack, rpath], recipe)
            merged = _merge(merged, parent_data, "", recipe.origins, recipe.key_origins, None)
    own = {k: v for k, v in data.items() if k != "extends"}
    # re-apply this file's locations for everything it defines
    return _merge_source(merged, own, src, recipe)


def _merge_source(merged: dict[str, Any], own: dict[str, Any], src: Source, recipe: Recipe) -> dict[str, Any]:
    return _merge(merged, own, "", recipe.origins, recipe.key_origins, src)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``KEY=VALUE`` (dotted key, YAML value)."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected KEY=VALUE, e.g. --set steps.mil.with.epochs=3")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set {text!r}: the key must be a dotted path like steps.mil.with.epochs")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"--set {text!r}: the value is not valid YAML ({exc})") from None
    if value is RESET and _reset_has_value(yaml.compose(raw, Loader=_Loader)):
        raise UsageError(f"--set {text!r}: {_RESET_TAKES_NO_VALUE}")
    return key.split("."), value


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
    node[last] = _merge(old, value, ptr, recipe.origins, recipe.key_origins, None, origin) \
        if isinstance(old, dict) and isinstance(value, dict) else _merge(None, value, ptr, recipe.origins,
                                                                         recipe.key_origins, None, origin)
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
        apply_override(recipe, text)
    return recipe
