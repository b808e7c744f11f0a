"""Parsing one recipe file: YAML with located values (every value knows its file, line and column
by JSON pointer), ``!reset``, and limits on size, depth and alias expansion (a one-line
:class:`RecipeError`, never a memory blow-up)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from hemaflow.core.errors import Problem, RecipeError

MAX_DEPTH = 64  # nesting levels of maps and lists (aliases expanded)
MAX_VALUES = 100_000  # values after alias expansion


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


@dataclass(frozen=True)
class Replace:
    """The value of ``key: !reset VALUE``: drop what ``extends`` gave ``key``, then set ``VALUE``."""

    value: Any


class _LimitError(Exception):
    """A recipe exceeds a parser limit at ``mark`` (a yaml.Mark or an :class:`Origin`)."""

    def __init__(self, message: str, mark: Any, pointer: str = ""):
        super().__init__(message)
        self.message, self.pointer = message, pointer
        if isinstance(mark, Origin):
            self.line, self.col = mark.line, mark.col
        else:
            self.line, self.col = (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)


class _Loader(yaml.SafeLoader):
    """SafeLoader: never constructs Python objects, so recipes cannot execute code.

    Two additions: composing stops at :data:`MAX_DEPTH` levels (PyYAML's composer recurses, so
    5000 nested brackets would end in RecursionError), and ``!reset`` is a complete tag in flow
    style too (``{a: !reset}``, ``[x, {b: !reset}]``: YAML would read ``!reset}`` as the tag).
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(f"maps and lists nest deeper than {MAX_DEPTH} levels; a recipe needs a few",
                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def scan_tag(self) -> Any:
        if self.flow_level and self.prefix(6) == "!reset" and self.peek(6) in ",]}":
            start = self.get_mark()
            self.forward(6)
            return yaml.tokens.TagToken(("!", "reset"), start, self.get_mark())
        return super().scan_tag()


def _plain(node: yaml.Node, loader: yaml.SafeLoader) -> yaml.Node:
    """``node`` without its ``!reset`` tag: the tag YAML would give it untagged."""
    if isinstance(node, yaml.ScalarNode):
        tag = loader.resolve(yaml.ScalarNode, node.value, (True, False))
        return yaml.ScalarNode(tag, node.value, node.start_mark, node.end_mark, node.style)
    tag = "tag:yaml.org,2002:map" if isinstance(node, yaml.MappingNode) else "tag:yaml.org,2002:seq"
    return type(node)(tag, node.value, node.start_mark, node.end_mark, node.flow_style)


def _construct_reset(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if not _reset_has_value(node):
        return RESET
    return Replace(loader.construct_object(_plain(node, loader), deep=True))


_Loader.add_constructor("!reset", _construct_reset)


def _reset_has_value(node: yaml.Node) -> bool:
    """True when a ``!reset`` node carries a value (``!reset 5``, ``!reset {a: 1}``)."""
    return bool(node.value) if isinstance(node.value, list) else str(node.value) not in ("", "null", "~", "Null", "NULL")


def _without_resets(value: Any) -> Any:
    """``value`` with every ``!reset`` key removed and every ``!reset VALUE`` unwrapped (there was
    nothing to reset)."""
    if isinstance(value, Replace):
        return _without_resets(value.value)
    if isinstance(value, dict):
        return {k: _without_resets(v) for k, v in value.items() if v is not RESET}
    return value


def _mark(path: str, mark: yaml.Mark) -> Origin:
    return Origin(path, mark.line + 1, mark.column + 1)


@dataclass
class _Walk:
    """State of one :func:`_convert` walk: values so far (aliases count each time they are used),
    the collection nodes being converted (a node inside itself is a recursive alias), depth."""

    path: str
    src: Source
    loader: _Loader
    problems: list[Problem]
    count: int = 0
    depth: int = 0
    active: set[int] = field(default_factory=set)
    merge_sizes: dict[int, int] = field(default_factory=dict)


def _top(ptr: str) -> str:
    return "/" + ptr.split("/")[1] if ptr.count("/") > 1 else ptr


def _merged_size(node: yaml.MappingNode, walk: _Walk, stack: list[int]) -> int:
    """Entries of ``node`` once its ``<<`` merge keys are flattened; refuses cycles and blow-ups
    before PyYAML's recursive ``flatten_mapping`` sees them."""
    if id(node) in walk.merge_sizes:
        return walk.merge_sizes[id(node)]
    if id(node) in stack:
        raise _LimitError(f"recursive YAML merge: the map at line {node.start_mark.line + 1} merges itself (<<)",
                          node.start_mark)
    if len(stack) > MAX_DEPTH:
        raise _LimitError(f"YAML merges (<<) chain deeper than {MAX_DEPTH} maps", node.start_mark)
    stack.append(id(node))
    n = 0
    for key_node, value_node in node.value:
        if key_node.tag != "tag:yaml.org,2002:merge":
            n += 1
            continue
        subs = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        n += sum(_merged_size(sub, walk, stack) for sub in subs if isinstance(sub, yaml.MappingNode))
        if n > MAX_VALUES:
            raise _LimitError(f"YAML merges (<<) expand to more than {MAX_VALUES} values; a recipe is far smaller",
                              node.start_mark)
    stack.pop()
    walk.merge_sizes[id(node)] = n
    return n


def _convert(node: yaml.Node, ptr: str, walk: _Walk) -> Any:
    walk.count += 1
    if walk.count > MAX_VALUES:
        raise _LimitError(f"YAML aliases expand to more than {MAX_VALUES} values (nested anchors, "
                          f"'billion laughs'); a recipe is far smaller",
                          walk.src.keys.get(_top(ptr)) or node.start_mark, _top(ptr))
    if isinstance(node, yaml.CollectionNode):
        if id(node) in walk.active:
            raise _LimitError(f"recursive YAML alias: the anchored value at line {node.start_mark.line + 1} "
                              f"contains itself", node.start_mark, ptr if ptr.count("/") <= MAX_DEPTH else _top(ptr))
        if walk.depth >= MAX_DEPTH:
            raise _LimitError(f"maps and lists nest deeper than {MAX_DEPTH} levels (aliases expanded); a recipe "
                              f"needs a few", node.start_mark, _top(ptr))
        walk.active.add(id(node))
        walk.depth += 1
        try:
            return _convert_collection(node, ptr, walk)
        finally:
            walk.depth -= 1
            walk.active.discard(id(node))
    return _convert_scalar(node, ptr, walk)


def _convert_scalar(node: yaml.Node, ptr: str, walk: _Walk) -> Any:
    walk.src.values[ptr] = _mark(walk.path, node.start_mark)
    if node.tag == "!reset":
        return Replace(walk.loader.construct_object(_plain(node, walk.loader))) if _reset_has_value(node) else RESET
    return walk.loader.construct_object(node, deep=True)


def _convert_collection(node: yaml.Node, ptr: str, walk: _Walk) -> Any:
    path, src, loader, problems = walk.path, walk.src, walk.loader, walk.problems
    src.values[ptr] = _mark(path, node.start_mark)
    if node.tag == "!reset":
        if not _reset_has_value(node):
            return RESET
        return Replace(_convert_collection(_plain(node, loader), ptr, walk))
    standard = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}
    if type(node) in standard and node.tag != standard[type(node)]:
        raise yaml.constructor.ConstructorError(None, None, f"unsupported YAML tag {node.tag!r} (recipes hold "
                                                f"plain data only)", node.start_mark)
    if isinstance(node, yaml.MappingNode):
        _merged_size(node, walk, [])
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        first_seen: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            kline, kcol = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if key_node.tag == "!reset":
                problems.append(Problem(path, kline, kcol, ptr, "!reset goes after a key (key: !reset), not in place "
                                                                "of one"))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                what = "a map" if isinstance(key_node, yaml.MappingNode) else "a list"
                problems.append(Problem(path, kline, kcol, ptr, f"mapping keys must be strings; got {what}"))
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                problems.append(Problem(path, kline, kcol, ptr, f"mapping keys must be strings; got "
                                                                f"{type(key).__name__}"))
                continue
            key = str(key) if not isinstance(key, str) else key
            child = ptr + "/" + escape(key)
            if key in first_seen:
                prev = first_seen[key].start_mark
                problems.append(Problem(path, kline, kcol, child,
                                        f"duplicate key {key!r} (first defined at line {prev.line + 1})"))
                continue
            first_seen[key] = key_node
            src.keys[child] = _mark(path, key_node.start_mark)
            out[key] = _convert(value_node, child, walk)
        return out
    for i, v in enumerate(node.value):
        if v.tag == "!reset":
            problems.append(Problem(path, v.start_mark.line + 1, v.start_mark.column + 1, f"{ptr}/{i}",
                                    "!reset removes a key; it cannot be a list item"))
    return [_convert(v, f"{ptr}/{i}", walk) for i, v in enumerate(node.value)]


def _yaml_problem(path: str, exc: yaml.YAMLError, text: str) -> Problem:
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, before any parsing
        before = text[:exc.position]
        line, col = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        what = "NUL byte" if exc.character == 0 else f"control character U+{exc.character:04X}"
        return Problem(path, line, col, "", f"{what} is not allowed in a recipe (YAML text holds printable "
                                            f"characters, tabs and line breaks only)")
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        what = exc.problem or str(exc)
        if exc.context:
            what = f"{exc.context}, {what}"
        return Problem(path, line, col, "", f"malformed YAML: {what}")
    return Problem(path, 0, 0, "", f"malformed YAML: {exc}")


def _parse(text: str, path: str) -> tuple[Source, list[Problem]]:
    """Parse ``text``; return the source and its located problems (duplicate keys, misplaced
    ``!reset``). Malformed YAML and exceeded limits raise RecipeError."""
    src = Source(path, None)
    problems: list[Problem] = []
    loader = None
    try:
        loader = _Loader(text)  # the reader checks the characters here
        node = loader.get_single_node()
        src.data = None if node is None else _convert(node, "", _Walk(path, src, loader, problems))
    except _LimitError as exc:
        raise RecipeError(Problem(path, exc.line, exc.col, exc.pointer, exc.message)) from None
    except yaml.YAMLError as exc:
        raise RecipeError(_yaml_problem(path, exc, text)) from None
    finally:
        if loader is not None:
            loader.dispose()
    return src, problems


def parse_yaml(text: str, path: str) -> Source:
    """Parse YAML text into a :class:`Source`; malformed YAML and duplicate keys raise RecipeError."""
    src, problems = _parse(text, path)
    if problems:
        raise RecipeError(problems)
    if src.data is None:
        src.data = {}
    return src
