"""The ``hemaflow`` command line (see the public contract in the README).

Exit codes: 0 success; 1 a check failed (invalid recipe, ``diff`` found differences);
2 usage error; 3 a run failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

from hemaflow import __version__
from hemaflow.core.errors import HemaflowError, RecipeError, StepError, UsageError


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _registry() -> Any:
    from hemaflow.core.plugins import PluginWarning, get_registry

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginWarning)
        reg = get_registry()
    for w in caught:
        if issubclass(w.category, PluginWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    return reg


def _resolve(path: str, overrides: Sequence[str] = ()) -> Any:
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.validate import resolve

    return resolve(load_recipe(path, list(overrides)), _registry())


def _writable_dir(path: Path, what: str) -> None:
    """UsageError naming ``what`` unless ``path`` is, or can be created as, a writable directory
    (``--out /proc/x``, an existing file, a read-only file system). Creates nothing: the probe
    file goes in the nearest existing folder and is removed at once."""
    import tempfile

    here = path
    while not here.exists() and here.parent != here:
        here = here.parent
    if not here.is_dir():
        raise UsageError(f"{what} {path}: " + ("is an existing file, not a directory" if here == path
                                               else f"{here} is a file, not a directory"))
    try:
        fd, probe = tempfile.mkstemp(dir=here, prefix=".hemaflow-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot write there ({exc.strerror or exc})") from None


def _check_executor(args: argparse.Namespace) -> None:
    if args.executor:
        known = sorted(_registry().components["executor"])
        if args.executor not in known:
            from hemaflow.core.errors import did_you_mean

            raise UsageError(f"--executor {args.executor!r}: no such executor{did_you_mean(args.executor, known)}; "
                             f"the executors are: {', '.join(known)}")


def _check_dirs(args: argparse.Namespace) -> None:
    """The run directory and the cache can be written: said before any step runs."""
    if args.out:
        _writable_dir(Path(args.out), "--out")
    if not args.no_cache:
        from hemaflow.core.cache import default_cache_dir

        try:
            _writable_dir(default_cache_dir(), "cache directory")
        except UsageError as exc:
            raise UsageError(f"{exc}; set HEMAFLOW_CACHE_DIR to a writable folder, or run with --no-cache") from None


# -- commands ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    _check_executor(args)
    if len(args.recipes) > 1:
        return _run_many(args)
    from hemaflow.core.runner import Runner

    resolved = _resolve(args.recipes[0], args.set)
    _check_dirs(args)
    runner = Runner(resolved, _registry(), console=_console(), use_cache=not args.no_cache, executor=args.executor,
                    verbose=args.verbose)
    runner.run(Path(args.out) if args.out else None)
    return 0


def _run_many(args: argparse.Namespace) -> int:
    """``hemaflow run A.yaml B.yaml ...``: an ablation sweep in one process.

    Every recipe is resolved and validated before the first one runs (a typo in the last recipe
    surfaces at once, not after an hour). The runs share the step cache and this process's
    loaded libraries, so an ablation after the first recipe costs only the steps it changes.
    A failed run is reported and the sweep goes on; the exit code is 3 if any run failed.
    ``--out DIR`` puts each run in ``DIR/<recipe name>/`` and writes ``DIR/sweep.json``: per
    recipe its status, wall seconds (set-up, steps and report, in this process) and run directory.
    """
    import time

    from hemaflow.core.runner import Runner

    resolved, problems = [], []
    for path in args.recipes:
        try:
            resolved.append(_resolve(path, args.set))
        except RecipeError as exc:
            problems += exc.problems
    if problems:
        raise RecipeError(problems)
    _check_dirs(args)
    console = _console()
    used: set[str] = set()
    rows = []
    for path, res in zip(args.recipes, resolved):
        run_dir = None
        if args.out:
            name, n = res.name, 1
            while name in used:
                n += 1
                name = f"{res.name}-{n}"
            used.add(name)
            run_dir = Path(args.out) / name
        t0 = time.perf_counter()
        try:
            runner = Runner(res, _registry(), console=console, use_cache=not args.no_cache, executor=args.executor,
                            verbose=args.verbose)
            outcome = runner.run(run_dir)
            bacc = outcome.metrics.get("patient", {}).get("balanced_accuracy")
            rows.append((path, "ok", time.perf_counter() - t0, str(outcome.run_dir), bacc))
        except HemaflowError as exc:  # bad data or a failed step: report it, go on with the next recipe
            _print_error(exc)
            rows.append((path, "failed", time.perf_counter() - t0, str(run_dir or "-"), None))
    from rich.table import Table

    table = Table(title=f"{len(rows)} runs")
    for col in ("recipe", "status", "seconds", "patient bal. acc.", "run directory"):
        table.add_column(col)
    for path, status, sec, out, bacc in rows:
        table.add_row(path, status, f"{sec:.1f}", "-" if bacc is None else f"{bacc:.3f}", out)
    console.print(table)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "sweep.json").write_text(json.dumps(
            [{"recipe": path, "status": status, "seconds": round(sec, 3), "run_dir": out,
              "patient_balanced_accuracy": bacc} for path, status, sec, out, bacc in rows], indent=1))
    return 3 if any(r[1] != "ok" for r in rows) else 0


def cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for path in args.recipes:
        try:
            _resolve(path, args.set)
            print(f"{path}: ok")
        except RecipeError as exc:
            for p in exc.problems:
                print(str(p), file=sys.stderr)
            status = 1
    return status


def _origins_lines(resolved: Any) -> list[str]:
    from hemaflow.core.diff import flatten

    lines = []
    for key, value in flatten(resolved.data).items():
        ptr = "/" + key.replace(".", "/")
        origin = resolved.recipe.locate(ptr)
        lines.append(f"{key}: {json.dumps(value, default=str)}    # {origin}")
    lines += [f"# note: {note}" for note in resolved.recipe.notes]  # e.g. a with: dropped as uses: changed
    return lines


def cmd_resolve(args: argparse.Namespace) -> int:
    import yaml

    resolved = _resolve(args.recipe, args.set)
    if args.origins:
        print("\n".join(_origins_lines(resolved)))
    else:
        print(yaml.safe_dump(resolved.data, sort_keys=False), end="")
    return 0


def _fmt(value: Any) -> str:
    from hemaflow.core.diff import MISSING

    return "(absent)" if value is MISSING else json.dumps(value, default=str)


def cmd_diff(args: argparse.Namespace) -> int:
    from hemaflow.core.diff import MISSING, diff

    a, b = _resolve(args.recipe_a), _resolve(args.recipe_b)
    changes = diff(a.data, b.data)

    def origin(res: Any, key: str, value: Any) -> str | None:
        return None if value is MISSING else str(res.recipe.locate("/" + key.replace(".", "/")))

    if args.json:
        out = [{"key": c.key, "change": c.kind,
                "old": None if c.old is MISSING else c.old, "new": None if c.new is MISSING else c.new,
                "old_origin": origin(a, c.key, c.old), "new_origin": origin(b, c.key, c.new)} for c in changes]
        print(json.dumps(out, indent=1, default=str))
    else:
        for c in changes:
            where = f"{origin(a, c.key, c.old) or '-'} -> {origin(b, c.key, c.new) or '-'}"
            print(f"{c.key}: {_fmt(c.old)} -> {_fmt(c.new)}    # {where}")
        if not changes:
            print("no differences")
    return 1 if changes else 0


def cmd_plugins(args: argparse.Namespace) -> int:
    reg = _registry()
    rows = [{"kind": kind, "name": name, "distribution": e.distribution, "version": e.version,
             "component_version": e.cls.version, "plugin": e.source,
             "description": (e.cls.__doc__ or "").strip().split("\n")[0],
             "inputs": e.cls.inputs, "outputs": e.cls.outputs, "schema": e.cls.schema}
            for kind, name, e in reg.entries()]
    if args.json:
        print(json.dumps(rows, indent=1, default=str))
        return 0
    from rich.table import Table

    table = Table(title=f"hemaflow {__version__} components")
    for col in ("kind", "name", "distribution", "version", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["distribution"], r["version"], r["description"])
    _console().print(table)
    for b in reg.broken:  # a broken third-party plugin is listed, not fatal (details on stderr)
        print(f"broken plugin: {b.distribution} (entry point {b.plugin!r}): {b.message}")
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from hemaflow.core.scaffold import new_plugin

    root = new_plugin(args.name, args.kind, args.out)
    print(f"wrote {root}")
    print(f"  next: pip install -e {root} && (cd {root} && python -m pytest && hemaflow validate recipe.yaml)")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from hemaflow.core.schema import compose_schema

    print(json.dumps(compose_schema(_registry()), indent=1))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hemaflow.core import compare

    runs = compare.load_runs([Path(p) for p in args.run_dirs])
    compare.print_comparison(_console(), runs)
    if args.html:
        try:
            Path(args.html).write_text(compare.render_comparison_html(runs), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--html {args.html}: cannot write ({exc.strerror or exc})") from None
        print(f"wrote {args.html}")
    return 0


def _print_error(exc: HemaflowError) -> None:
    """One line for a user-facing error, plus where the traceback is when a component crashed."""
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, StepError) and exc.__cause__ is not None and not isinstance(exc.__cause__, HemaflowError):
        print("  (an unexpected error inside the component; details in the run directory's error.log,"
              " or rerun with --debug)", file=sys.stderr)


# -- parser --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hemaflow", description="Leukemia classification workflows from YAML recipes.")
    p.add_argument("--version", action="version", version=f"hemaflow {__version__}")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    r = sub.add_parser("run", help="run a recipe (several: an ablation sweep in one process)")
    r.add_argument("recipes", nargs="+", metavar="RECIPE")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key (YAML value)")
    r.add_argument("--out", help="run directory (default runs/<name>-<UTC timestamp>/); with several recipes, "
                                 "the parent of one <recipe name>/ folder per run")
    r.add_argument("--no-cache", action="store_true", help="neither reuse nor store finished steps")
    r.add_argument("--executor", help="executor for per-item work (e.g. serial, processes)")
    r.add_argument("-v", "--verbose", action="store_true", help="print step details (e.g. every training epoch)")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("validate", help="check recipes; one line per problem")
    v.add_argument("recipes", nargs="+")
    v.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="check the recipes with this override (as `run --set` would apply it)")
    v.set_defaults(func=cmd_validate)

    s = sub.add_parser("resolve", help="print the resolved recipe")
    s.add_argument("recipe")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--origins", action="store_true", help="show which file or override each value came from")
    s.set_defaults(func=cmd_resolve)

    d = sub.add_parser("diff", help="semantic diff of two resolved recipes (exit 1 if they differ)")
    d.add_argument("recipe_a")
    d.add_argument("recipe_b")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_diff)

    c = sub.add_parser("compare", help="compare run directories: recipe diff beside metrics")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--html", metavar="FILE", help="also write an HTML comparison page")
    c.set_defaults(func=cmd_compare)

    pl = sub.add_parser("plugins", help="list registered components")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plugins)

    sc = sub.add_parser("schema", help="print the composed recipe JSON Schema")
    sc.set_defaults(func=cmd_schema)

    from hemaflow.core.kinds import KINDS

    npl = sub.add_parser("new-plugin", help="write a plugin package (component, entry point, tests, recipe)",
                         description="Write hemaflow-NAME/: pyproject.toml with the hemaflow entry point, a working "
                                     "component of KIND, a conformance test and a recipe (see docs/plugins.md).")
    npl.add_argument("name", metavar="NAME", help="plugin name, e.g. lab-otsu (distribution hemaflow-lab-otsu)")
    npl.add_argument("--kind", required=True, metavar="KIND", help=f"one of: {', '.join(KINDS)}")
    npl.add_argument("--out", default=".", metavar="DIR", help="parent folder of the package (default: .)")
    npl.set_defaults(func=cmd_new_plugin)

    from hemaflow.core import cache_cmd

    cache_cmd.add_parser(sub)  # hemaflow cache ls|verify|prune|clear
    from hemaflow.core import bundle

    bundle.add_parsers(sub)  # hemaflow export|predict
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("HEMAFLOW_DEBUG") == "1"
    try:
        return int(args.func(args) or 0)
    except RecipeError as exc:
        if debug:
            raise
        for p in exc.problems:
            print(str(p), file=sys.stderr)
        return 1 if args.command in ("validate", "resolve", "diff", "run") and args.command != "run" else 1
    except StepError as exc:
        if debug:
            raise
        _print_error(exc)
        print("  finished steps are kept in the cache; rerunning resumes from there", file=sys.stderr)
        return 3
    except UsageError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except HemaflowError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; finished steps are kept in the cache", file=sys.stderr)
        return 130
    except BrokenPipeError:  # pragma: no cover - e.g. `hemaflow schema | head`
        return 0
    except Exception as exc:  # a bug in hemaflow itself: say so plainly
        if debug:
            raise
        print(f"internal error: {type(exc).__name__}: {exc}\n  this is a bug in hemaflow; rerun with --debug "
              f"for the traceback and report it", file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
