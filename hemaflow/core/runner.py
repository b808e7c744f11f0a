"""The runner: executes a resolved recipe's steps in order, with the step cache.

For each step the runner computes a cache key from the component's name and version, its
resolved parameters, the cache keys of its inputs, the seed and the component's data
fingerprint; a finished entry is reused, otherwise the component runs in a fresh work
directory that is committed atomically. Afterwards the run directory gets the files promised
in the public contract (resolved recipe, provenance, metrics, predictions, report).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from hemaflow import __version__
from hemaflow.core import atomic
from hemaflow.core.artifacts import Artifact, Metrics, Predictions
from hemaflow.core import filehash
from hemaflow.core import chain as _chain
from hemaflow.core.cache import EntryDamaged, StepCache, cache_key, default_cache_dir
from hemaflow.core.component import RunContext, key_params
from hemaflow.core.errors import HemaflowError, OutputError, StepError
from hemaflow.core.plugins import Registry
from hemaflow.core.report_items import ReportItems
from hemaflow.core.validate import Resolved, StepSpec


@dataclass
class StepResult:
    """What one step produced, and whether it came from the cache."""

    id: str
    uses: str
    kind: str
    key: str
    cached: bool
    seconds: float
    entry: Path
    params: dict[str, Any]
    outputs: dict[str, Artifact] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "uses": self.uses, "kind": self.kind, "cached": self.cached,
                "seconds": round(self.seconds, 3), "warnings": self.warnings,
                "outputs": {k: v.summary() for k, v in self.outputs.items()},
                "report_dir": self.entry / "_report",
                "report_items": ReportItems(self.entry / "_report").items}


class _KeyOnly:
    """A finished-to-be step's cache key, for computing the keys of a chain before it runs."""

    def __init__(self, key: str) -> None:
        self.key = key


@dataclass
class RunOutcome:
    run_dir: Path
    steps: list[StepResult]
    metrics: dict[str, Any]
    seconds: float


def _no_cuda_here() -> bool:
    """True when CUDA certainly is not usable (all devices hidden, or Linux without an NVIDIA
    driver loaded): then ``auto`` is ``cpu`` without importing torch, which takes seconds."""
    import os

    if os.environ.get("CUDA_VISIBLE_DEVICES") in ("", "-1"):
        return True
    return sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists()


def resolve_device(device: str) -> str:
    """``auto`` is ``cuda`` when torch sees a CUDA device, else ``cpu``; other values unchanged."""
    if device != "auto":
        return device
    if _no_cuda_here():
        return "cpu"
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        return "cpu"


def default_run_dir(name: str, root: Path = Path("runs")) -> Path:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"{name}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = root / f"{name}-{stamp}-{n}"
    return path


def merge_metrics(steps: list[tuple[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Assemble ``metrics.json`` from each step's Metrics values, in step order.

    A section (``segmentation``, ``patient``, ``folds``...) keeps its plain name for the first
    step that writes it, as the contract documents; the same section from a later step goes under
    ``<section>@<step id>`` (``segmentation@evaluate_nucleus``), so two evaluators never
    overwrite each other. Returns the merged dict and, per step id, the keys it wrote.
    """
    merged: dict[str, Any] = {}
    keys: dict[str, list[str]] = {}
    for step_id, values in steps:
        for section, value in values.items():
            key = section if section not in merged else f"{section}@{step_id}"
            merged[key] = value
            keys.setdefault(step_id, []).append(key)
    return merged, keys


#: Files of a run directory that hemaflow writes (besides the exports a run records in
#: provenance.json's ``files``); a run into a reused directory removes them first.
RUN_FILES = ("recipe.resolved.yaml", "provenance.json", "metrics.json", "predictions.csv", "report.html",
             "error.log", "mlflow.json")


def clean_run_dir(run_dir: Path) -> list[str]:
    """Remove the files an earlier run wrote into ``run_dir`` and return their names.

    Only a directory that holds a run (``provenance.json`` or ``recipe.resolved.yaml``) is
    cleaned, and only of files hemaflow writes: :data:`RUN_FILES`, the exports the earlier run
    listed in ``provenance.json`` (``files``), and temporary files of interrupted atomic writes
    of those. Anything else (a user's notes, folders) stays. This way a failed run never
    leaves an older run's ``report.html`` beside it, nor a successful run an older ``error.log``.
    """
    run_dir = Path(run_dir)
    prov_path = run_dir / "provenance.json"
    if not prov_path.is_file() and not (run_dir / "recipe.resolved.yaml").is_file():
        return []
    names = set(RUN_FILES)
    try:
        listed = json.loads(prov_path.read_text()).get("files") or []
    except (OSError, ValueError, AttributeError):
        listed = []
    for name in listed if isinstance(listed, list) else []:
        # a bare file name of this directory only: never a path that leads elsewhere
        if isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name and "\\" not in name:
            names.add(name)
    removed = []
    for p in run_dir.iterdir():
        stale = p.name in names or (atomic.is_temp_name(p.name) and
                                    any(p.name.startswith(f".{n}{atomic.TMP_MARK}") for n in names))
        if stale and (p.is_symlink() or p.is_file()):
            p.unlink()
            removed.append(p.name)
    return sorted(removed)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _git_commit(path: Path) -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        return res.stdout.strip() or None if res.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


class Runner:
    """Runs a :class:`Resolved` recipe.

    Args:
        resolved: the validated recipe.
        registry: the component registry.
        console: a rich Console for progress and step summaries (None: quiet).
        cache_dir: cache root (default: :func:`default_cache_dir`).
        use_cache: False for ``--no-cache`` (neither read nor write the shared cache).
        executor: executor name overriding the recipe's (``--executor``).
        fuse: run chains of consecutive per-item steps item by item in one executor task
            (:mod:`hemaflow.core.chain`); None: ``HEMAFLOW_FUSE`` (default on).
    """

    def __init__(self, resolved: Resolved, registry: Registry, *, console: Any = None,
                 cache_dir: Path | None = None, use_cache: bool = True, executor: str | None = None,
                 progress: bool | None = None, verbose: bool = False, fuse: bool | None = None) -> None:
        self.verbose = verbose
        self.fuse = _chain.fusion_enabled(fuse)
        self.resolved = resolved
        self.registry = registry
        self.console = console
        self.use_cache = use_cache
        self._tmp_cache: Path | None = None
        if use_cache:
            self.cache = StepCache(cache_dir or default_cache_dir())
        else:
            self._tmp_cache = Path(tempfile.mkdtemp(prefix="hemaflow-nocache-"))
            self.cache = StepCache(self._tmp_cache)
        filehash.attach(self.cache.root if use_cache else None)  # digests of big weights files kept there
        self._cache_warnings: dict[str, str] = {}  # step id -> why its damaged entry was recomputed
        data = resolved.data
        ex = dict(data.get("executor") or {"uses": "serial"})
        if executor:
            ex = {"uses": executor, "with": {}}
        from hemaflow.core.schema import fill_defaults

        ex_cls = registry.get("executor", ex["uses"])
        self.executor = ex_cls(**fill_defaults(ex_cls.schema, dict(ex.get("with") or {})))
        self.seed = int(data.get("seed", 0))
        self.device = resolve_device(str(data.get("device", "auto")))
        if progress is None:
            progress = bool(console is not None and console.is_terminal)
        self._progress_enabled = progress
        self._progress: Any = None
        self._metrics_keys: dict[str, list[str]] = {}  # step id -> its keys in metrics.json
        self._written: set[str] = set()  # files of the run directory this run wrote

    # -- output ------------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, highlight=False)

    def _log(self, text: str) -> None:
        from rich.markup import escape

        self._print("    " + escape(text))

    @contextlib.contextmanager
    def _progress_task(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        if self._progress is None:
            yield lambda n=1: None
            return
        task = self._progress.add_task(description, total=total)
        try:
            yield lambda n=1: self._progress.advance(task, n)
        finally:
            self._progress.remove_task(task)

    # -- steps -------------------------------------------------------------------------------
    def _key(self, spec: StepSpec, comp: Any, results: dict[str, StepResult]) -> tuple[str, str | None]:
        fp = comp.fingerprint()
        params, files = key_params(comp)  # local files by content (a component without any: key unchanged)
        payload = {
            "component": spec.uses,
            "kind": spec.kind,
            "version": spec.cls.version,
            "params": params,
            "inputs": {name: [results[src].key, out] for name, (src, out) in sorted(spec.inputs.items())},
            "seed": self.seed,
            "fingerprint": fp,
        }
        if files:
            payload["files"] = files
        return cache_key(payload), fp

    def _load_outputs(self, key: str) -> dict[str, Artifact]:
        return {name: self.registry.artifact_type(type_name).load(path)
                for name, (type_name, path) in self.cache.outputs(key).items()}

    def _cached(self, spec: StepSpec, key: str) -> StepResult | None:
        """The step's finished entry if it passes the cache's check; a damaged one is removed,
        with a warning, and the step computed again (never used, never an internal error)."""
        try:
            found = self.cache.lookup_info(key)
            if found is None:
                return None
            entry, info = found
            outputs = self._load_outputs(key)
        except EntryDamaged as exc:
            problem = str(exc)
        except (MemoryError, RecursionError):  # this machine's limits: no sign of damage
            raise
        except Exception as exc:  # an output that does not load is as damaged as a failed check
            problem = f"an output does not load: {type(exc).__name__}: {exc}"
        else:
            warnings = info.get("warnings")
            res = StepResult(spec.id, spec.uses, spec.kind, key, True, 0.0, entry, spec.params, outputs,
                             [str(w) for w in warnings] if isinstance(warnings, list) else [])
            res.fingerprint = info.get("fingerprint")  # type: ignore[attr-defined]
            res.ran_seconds = info.get("seconds", 0.0)  # type: ignore[attr-defined]
            return res
        self.cache.remove(key)
        msg = f"cache entry {key[:12]} was damaged ({problem[:300]}): discarded, the step is computed again"
        self._cache_warnings[spec.id] = msg
        self._print(f"  [yellow]warning:[/yellow] {_escape(spec.id)}: {_escape(msg)}")
        return None

    def _run_step(self, spec: StepSpec, results: dict[str, StepResult]) -> StepResult:
        comp = spec.cls(**spec.params)
        try:
            key, fp = self._key(spec, comp, results)
        except HemaflowError:
            raise
        except Exception as exc:
            raise StepError(spec.id, spec.uses, f"computing the data fingerprint failed: {exc}") from exc
        inputs = {name: results[src].outputs[out] for name, (src, out) in spec.inputs.items()}
        res = self._cached(spec, key)
        if res is not None:
            return res
        # one run computes a step at a time; a concurrent identical run waits, then uses its entry
        with self.cache.lock(key, on_wait=lambda who: self._print(
                f"  {_escape(spec.id)}: waiting for {_escape(who)}, which is computing this step")) as locked:
            if not locked:
                self._print(f"  [yellow]{_escape(spec.id)}: still locked after the lock timeout; computing it here "
                            "too[/yellow]")
            return self._cached(spec, key) or self._compute(spec, comp, key, fp, inputs)

    def _context(self, spec: StepSpec, workdir: Path) -> RunContext:
        return RunContext(step_id=spec.id, workdir=workdir, seed=self.seed, device=self.device,
                          executor=self.executor, progress_factory=self._progress_task if self._progress else None,
                          recipe=self.resolved.data, log=self._log if self.console is not None else None,
                          verbose=self.verbose)

    # -- fused per-item chains (hemaflow.core.chain) -------------------------------------------
    def _chain_at(self, i: int, results: dict[str, StepResult]) -> list[tuple[StepSpec, Any, str, str | None]]:
        """The uncached chain of per-item steps starting at step ``i`` (fewer than 2: none)."""
        steps = self.resolved.steps
        if not self.fuse or not _chain.is_per_item(steps[i]):
            return []
        specs = [steps[i]]
        done = set(results)
        while i + len(specs) < len(steps) and _chain.links(specs[-1], steps[i + len(specs)], done):
            specs.append(steps[i + len(specs)])
        if len(specs) < 2:
            return []
        keys: dict[str, Any] = dict(results)
        out = []
        for spec in specs:
            comp = spec.cls(**spec.params)
            try:
                key, fp = self._key(spec, comp, keys)  # type: ignore[arg-type]
            except Exception:
                break  # the unfused path reports it
            if self.cache.lookup(key) is not None:
                break  # a cached step ends the chain (a partly cached chain: the rest fuses later)
            keys[spec.id] = _KeyOnly(key)
            out.append((spec, comp, key, fp))
        return out if len(out) >= 2 else []

    def _run_chain(self, chain: list[tuple[StepSpec, Any, str, str | None]],
                   results: dict[str, StepResult]) -> list[StepResult]:
        """Run a chain item by item in one executor task each, then commit every step's entry
        as the unfused path would (same keys, same ``assemble``). Returns the steps' results."""
        ids = [spec.id for spec, *_ in chain]
        with contextlib.ExitStack() as stack:
            for spec, _, key, _ in chain:
                stack.enter_context(self.cache.lock(key))
            if any(self.cache.lookup(key) is not None for *_, key, _ in chain):  # another run made one meanwhile
                return []
            first, comp0, key0, _ = chain[0]
            inputs0 = {name: results[src].outputs[out] for name, (src, out) in first.inputs.items()}
            scratch = self.cache.new_workdir(key0)
            t0 = time.perf_counter()
            early: list[list[str]] = [[] for _ in chain]  # warnings of items() and side(), per step
            try:
                ctx0 = self._context(first, scratch)
                items = comp0.items(ctx0, **inputs0)
                early[0] = ctx0.warnings
                comps = [comp for _, comp, _, _ in chain]
                sides: list[Any] = [None]
                for j, (spec, comp, _, _) in enumerate(chain[1:], start=1):
                    ctx = self._context(spec, scratch)
                    sides.append(comp.side(ctx, **{name: results[src].outputs[out]
                                                   for name, (src, out) in spec.inputs.items()
                                                   if name != spec.cls.item_input}))
                    early[j] = ctx.warnings
                tasks = [(_chain.item_label(item, n), comps, sides, item) for n, item in enumerate(items)]
                with self._progress_task(f"{'+'.join(ids)} (fused)", len(tasks)) as advance:
                    per_item = self.executor.map(_chain.run_chain_item, tasks,
                                                 progress=advance if self._progress else None)
            except _chain.ChainItemError as exc:
                spec = chain[exc.args[0]][0]
                # a user's problem (bad data) is no bug: no traceback in error.log, as unfused
                cause = HemaflowError(exc.args[1]) if exc.args[2:3] == (True,) else exc
                raise StepError(spec.id, spec.uses, str(exc.args[1])) from cause
            except HemaflowError as exc:
                if isinstance(exc, StepError):
                    raise
                raise StepError(first.id, first.uses, f"fused chain {'+'.join(ids)}: {exc}") from exc
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise StepError(first.id, first.uses,
                                f"fused chain {'+'.join(ids)}: {type(exc).__name__}: {exc}") from exc
            finally:
                self.cache.discard(scratch)
            share = (time.perf_counter() - t0) / len(chain)
            done = []
            for j, (spec, comp, key, fp) in enumerate(chain):
                inputs = {name: results[src].outputs[out] for name, (src, out) in spec.inputs.items()}
                mine = _chain.step_results(per_item, j)
                res = self._compute(spec, comp, key, fp, inputs,
                                    call=lambda ctx, c=comp, r=mine, inp=inputs: c.assemble(ctx, r, **inp),
                                    extra_seconds=share, fused=ids, warnings=early[j])
                results[spec.id] = res
                done.append(res)
            return done

    def _compute(self, spec: StepSpec, comp: Any, key: str, fp: str | None, inputs: dict[str, Any], *,
                 call: Callable[[RunContext], Any] | None = None, extra_seconds: float = 0.0,
                 fused: list[str] | None = None, warnings: list[str] | None = None) -> StepResult:
        workdir = self.cache.new_workdir(key)
        ctx = self._context(spec, workdir)
        ctx.warnings.extend(warnings or [])  # a fused step's warnings from before the chain's map
        random.seed(ctx.torch_seed("python"))
        if "torch" in sys.modules:
            sys.modules["torch"].manual_seed(ctx.torch_seed("torch"))
        t0 = time.perf_counter()
        try:
            outputs = call(ctx) if call is not None else comp.run(ctx, **inputs)
        except HemaflowError as exc:
            self.cache.discard(workdir)
            if isinstance(exc, StepError):
                raise
            raise StepError(spec.id, spec.uses, str(exc)) from exc
        except KeyboardInterrupt:
            self.cache.discard(workdir)
            raise
        except Exception as exc:
            self.cache.discard(workdir)
            raise StepError(spec.id, spec.uses, f"{type(exc).__name__}: {exc}") from exc
        seconds = time.perf_counter() - t0 + extra_seconds
        outputs = self._check_outputs(spec, outputs, workdir)
        info = {"component": spec.uses, "step": spec.id, "version": spec.cls.version, "params": spec.params, "key": key,
                "seconds": seconds, "warnings": ctx.warnings, "fingerprint": fp,
                "finished": dt.datetime.now(dt.timezone.utc).isoformat()}
        try:
            entry = self.cache.commit(key, workdir, info)
        except (OSError, ValueError) as exc:  # a link among the outputs, a cache that cannot take the entry
            self.cache.discard(workdir)
            raise StepError(spec.id, spec.uses, f"cannot store the step's outputs in the cache "
                                                f"{self.cache.root}: {exc}") from None
        damaged = self._cache_warnings.pop(spec.id, None)
        res = StepResult(spec.id, spec.uses, spec.kind, key, False, seconds, entry, spec.params,
                         self._load_outputs(key), [damaged] * bool(damaged) + list(ctx.warnings))
        res.fingerprint = fp  # type: ignore[attr-defined]
        res.ran_seconds = seconds  # type: ignore[attr-defined]
        if fused:
            res.fused = list(fused)  # type: ignore[attr-defined]
        return res

    def _check_outputs(self, spec: StepSpec, outputs: Any, workdir: Path) -> dict[str, Artifact]:
        if isinstance(outputs, Artifact) and len(spec.cls.outputs) == 1:
            outputs = {next(iter(spec.cls.outputs)): outputs}
        if not isinstance(outputs, dict):
            raise StepError(spec.id, spec.uses, f"run() returned {type(outputs).__name__}; expected a dict of outputs")
        missing = [k for k in spec.cls.outputs if k not in outputs]
        if missing:
            raise StepError(spec.id, spec.uses, f"run() did not return declared output(s) {missing}")
        desc = {}
        for name, art in outputs.items():
            want = self.registry.artifact_types.get(spec.cls.outputs.get(name, ""), Artifact)
            if not isinstance(art, want):
                raise StepError(spec.id, spec.uses, f"output {name!r} is a {type(art).__name__}; expected {want.type_name}")
            if not (art.path / "meta.json").exists():
                art.save()
            try:  # relative to the entry, or to the upstream entry of an input passed through unchanged
                ref = self.cache.output_ref(workdir, art.path)
            except ValueError as exc:
                raise StepError(spec.id, spec.uses, f"output {name!r}: {exc}") from None
            desc[name] = {"type": art.type_name, **ref}
        (workdir / "outputs.json").write_text(json.dumps(desc, indent=1))
        return outputs

    # -- the run -----------------------------------------------------------------------------
    def run(self, run_dir: Path | None = None) -> RunOutcome:
        data = self.resolved.data
        run_dir = Path(run_dir) if run_dir else default_run_dir(self.resolved.name)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # /proc/x, an existing file, a read-only file system
            raise OutputError(run_dir, exc) from exc
        self._written = {"recipe.resolved.yaml", "provenance.json"}
        started = dt.datetime.now(dt.timezone.utc)
        t0 = time.perf_counter()
        results: dict[str, StepResult] = {}
        failure: BaseException | None = None
        if self.use_cache:
            with contextlib.suppress(OSError):  # work folders of killed runs (a read-only cache: not ours to clean)
                self.cache.clean_orphans()
        try:
            clean_run_dir(run_dir)
            atomic.write_text(run_dir / "recipe.resolved.yaml",
                              yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True))
            # a run directory always says whether its run finished: "running" until the end
            self._write_provenance(run_dir, results, started, 0.0, None, status="running")
        except OSError as exc:
            raise OutputError(run_dir, exc) from exc
        progress_cm: Any = contextlib.nullcontext()
        if self._progress_enabled and self.console is not None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                      console=self.console, transient=True)
            progress_cm = self._progress
        self._print(f"[bold]hemaflow run[/bold] {self.resolved.name}  ->  {run_dir}  "
                    f"(seed {self.seed}, device {self.device}, executor {self.executor.name}, "
                    f"cache {'off' if not self.use_cache else self.cache.root})")
        try:
            with progress_cm:
                steps, i = self.resolved.steps, 0
                while i < len(steps):
                    chain = self._chain_at(i, results)
                    ran = self._run_chain(chain, results) if chain else []
                    if not ran:
                        ran = [self._run_step(steps[i], results)]
                    i += len(ran)
                    for res in ran:
                        self._summary(res)
                        results[res.id] = res
        except (StepError, KeyboardInterrupt) as exc:
            failure = exc
        finally:
            self.executor.close()
        return self._finish(run_dir, results, started, t0, failure)

    def _summary(self, res: StepResult) -> None:
        how = "[cyan]cached[/cyan]" if res.cached else f"ran {res.seconds:6.1f} s"
        if getattr(res, "fused", None):
            how += " (fused)"
        outs = "; ".join(a.summary() for a in res.outputs.values())
        warn = f"  [yellow]{len(res.warnings)} warning(s)[/yellow]" if res.warnings else ""
        self._print(f"  [green]✓[/green] {res.id:<14} {res.uses:<20} {how}  {outs}{warn}")

    def _finish(self, run_dir: Path, results: dict[str, StepResult], started: dt.datetime, t0: float,
                failure: BaseException | None) -> RunOutcome:
        seconds = time.perf_counter() - t0
        try:
            metrics = self._write_outputs(run_dir, results, started, seconds, failure)
            if failure is None:
                self._report_and_track(run_dir, results, metrics, started, seconds)
        except (HemaflowError, KeyboardInterrupt) as exc:
            failure = failure or exc
        except OSError as exc:  # disk full, read-only: the run directory, not a step, failed
            failure = failure or OutputError(run_dir, exc)
            failure.__cause__ = exc
        except Exception as exc:  # a bug in hemaflow: the directory still says the run failed
            with contextlib.suppress(OSError):
                self._write_provenance(run_dir, results, started, seconds, failure or exc)
            self._drop_tmp_cache()
            raise
        if failure is not None:
            # best effort: on a full disk these fail too, and must not hide the first error
            with contextlib.suppress(OSError):
                if isinstance(failure, StepError) and failure.__cause__ is not None and \
                        not isinstance(failure.__cause__, HemaflowError):
                    atomic.write_text(run_dir / "error.log", "".join(traceback.format_exception(failure.__cause__)))
                    self._written.add("error.log")
            with contextlib.suppress(OSError):
                self._write_provenance(run_dir, results, started, seconds, failure)
            self._drop_tmp_cache()  # a failed --no-cache run leaves no temporary cache behind either
            raise failure
        return RunOutcome(run_dir, list(results.values()), metrics, seconds)

    def _drop_tmp_cache(self) -> None:
        """Remove the temporary cache of a ``--no-cache`` run (its entries are of no later use)."""
        if self._tmp_cache is not None:
            shutil.rmtree(self._tmp_cache, ignore_errors=True)

    def _write_provenance(self, run_dir: Path, results: dict[str, StepResult], started: dt.datetime,
                          seconds: float, failure: BaseException | None, status: str | None = None) -> dict[str, Any]:
        prov = self.provenance(results, started, seconds, failure)
        if status is not None:
            prov["status"] = status
        prov["files"] = sorted(self._written)
        atomic.write_text(run_dir / "provenance.json", json.dumps(prov, indent=1, default=str))
        return prov

    def _write_outputs(self, run_dir: Path, results: dict[str, StepResult], started: dt.datetime,
                       seconds: float, failure: BaseException | None) -> dict[str, Any]:
        import pandas as pd

        metric_steps: list[tuple[str, dict[str, Any]]] = []
        preds = []
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir() if p.is_file()}
        for res in results.values():
            for art in res.outputs.values():
                if isinstance(art, Metrics):
                    metric_steps.append((res.id, art.values))
                if isinstance(art, Predictions):
                    preds.append(art.table)
                try:
                    art.export(run_dir, res.id)
                except Exception as exc:  # exporting is a convenience; never lose the run for it
                    self._print(f"  [yellow]could not export {res.id}: {exc}[/yellow]")
        # exports are files hemaflow wrote: recorded, so that a later run into this directory
        # removes the ones it does not rewrite
        self._written.update(p.name for p in run_dir.iterdir()
                             if p.is_file() and before.get(p.name) != p.stat().st_mtime_ns)
        if failure is None and len(self._written) > 2:  # recorded now, in case the run is killed later
            self._write_provenance(run_dir, results, started, seconds, None, status="running")
        metrics, self._metrics_keys = merge_metrics(metric_steps)
        for step_id, keys in self._metrics_keys.items():
            for key in keys:
                if "@" in key:
                    self._print(f"  [yellow]{step_id} writes metrics section {key.split('@')[0]!r} that an earlier "
                                f"step wrote: kept as {key!r} in metrics.json[/yellow]")
        atomic.write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1, default=float))
        if preds:
            table = pd.concat(preds, ignore_index=True, sort=False)
            front = ["id", "level", "fold", "y_true", "y_pred"]
            probs = sorted(c for c in table.columns if c.startswith("prob_"))
            rest = [c for c in table.columns if c not in front and c not in probs]
            table = table[front + probs + rest]
        else:
            table = pd.DataFrame(columns=["id", "level", "fold", "y_true", "y_pred"])
        with atomic.replacing(run_dir / "predictions.csv") as tmp:
            table.to_csv(tmp, index=False)
        self._written.update(("metrics.json", "predictions.csv"))
        return metrics

    def provenance(self, results: dict[str, StepResult], started: dt.datetime, seconds: float,
                   failure: BaseException | None = None) -> dict[str, Any]:
        import hashlib

        versions = {"hemaflow": __version__, "python": platform.python_version()}
        for mod in ("torch", "numpy", "timm", "segmentation_models_pytorch", "torchstain", "radiomics", "sklearn"):
            if mod in sys.modules:
                versions[mod] = str(getattr(sys.modules[mod], "__version__", "?"))
        plugins = {}
        for res in results.values():
            for kind in (res.kind,):
                entry = self.registry.components[kind].get(res.uses)
                if entry is not None:
                    plugins[res.uses] = {"kind": kind, "plugin": entry.source, "distribution": entry.distribution,
                                         "version": entry.version, "component_version": entry.cls.version}
        # data sets hash the files they read; generated data is identified by its step's cache key
        fps = {r.id: getattr(r, "fingerprint", None) or r.key for r in results.values()
               if getattr(r, "fingerprint", None) or r.kind == "dataset"}
        data_hash = hashlib.sha256(json.dumps(fps, sort_keys=True).encode()).hexdigest()[:16] if fps else None
        return {
            "recipe": self.resolved.name,
            "recipe_files": self.resolved.recipe.files,
            "started": started.isoformat(),
            "seconds": round(seconds, 3),
            "status": "ok" if failure is None else "failed",
            "error": None if failure is None else (str(failure) or type(failure).__name__),
            "seed": self.seed,
            "device": self.device,
            "executor": self.executor.name,
            "cache": str(self.cache.root) if self.use_cache else None,
            "versions": versions,
            "plugins": plugins,
            "git_commit": _git_commit(self.resolved.recipe.path.resolve().parent),
            "input_data_hash": data_hash,
            "input_fingerprints": fps,
            "steps": [{"id": r.id, "component": r.uses, "kind": r.kind, "params": r.params, "cache_key": r.key,
                       "cache_hit": r.cached, "seconds": round(r.seconds, 3),
                       "original_seconds": round(getattr(r, "ran_seconds", r.seconds) or 0.0, 3),
                       "warnings": r.warnings,
                       **({"fused": r.fused} if getattr(r, "fused", None) else {}),
                       "metrics": self._metrics_keys.get(r.id, [])}
                      for r in results.values()],
        }

    def _run_dict(self, run_dir: Path, results: dict[str, StepResult], metrics: dict[str, Any],
                  started: dt.datetime, seconds: float, prov: dict[str, Any] | None = None) -> dict[str, Any]:
        import pandas as pd

        pred_path = run_dir / "predictions.csv"
        preds = pd.read_csv(pred_path) if pred_path.exists() else None
        return {
            "name": self.resolved.name,
            "recipe": self.resolved.data,
            "recipe_yaml": (run_dir / "recipe.resolved.yaml").read_text(),
            "provenance": prov if prov is not None else json.loads((run_dir / "provenance.json").read_text()),
            "metrics": metrics,
            "predictions": preds,
            "duration_s": seconds,
            "started": started.isoformat(),
            "run_dir": run_dir,
            "steps": [r.as_dict() for r in results.values()],
        }

    def _report_and_track(self, run_dir: Path, results: dict[str, StepResult], metrics: dict[str, Any],
                          started: dt.datetime, seconds: float) -> None:
        from hemaflow.core.schema import fill_defaults

        data = self.resolved.data
        prov = self.provenance(results, started, seconds)
        prov["files"] = sorted(self._written | {"report.html"})
        run = self._run_dict(run_dir, results, metrics, started, seconds, prov)
        ref = data.get("report") or {"uses": "html"}
        cls = self.registry.get("reporter", ref["uses"])
        try:
            cls(**fill_defaults(cls.schema, dict(ref.get("with") or {}))).write(run_dir, run)
        except HemaflowError:
            raise
        except Exception as exc:
            raise StepError("report", ref["uses"], f"{type(exc).__name__}: {exc}") from exc
        self._written.add("report.html")
        self._write_provenance(run_dir, results, started, seconds, None)  # the run finished: "ok"
        for tid, tref in (data.get("trackers") or {}).items():
            tcls = self.registry.get("tracker", tref["uses"])
            try:
                tcls(**fill_defaults(tcls.schema, dict(tref.get("with") or {}))).track(run_dir, run)
            except HemaflowError:
                raise
            except Exception as exc:
                raise StepError(f"trackers.{tid}", tref["uses"], f"{type(exc).__name__}: {exc}") from exc
        self._drop_tmp_cache()
        total_cached = sum(r.cached for r in results.values())
        self._print(f"[bold green]done[/bold green] in {seconds:.1f} s ({total_cached}/{len(results)} steps cached)"
                    f" -> {run_dir}")
