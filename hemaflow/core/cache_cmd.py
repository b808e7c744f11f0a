"""``hemaflow cache ls|verify|prune|clear``: look after the step cache (like ``pip cache``).

Every command works on ``--cache-dir DIR``, else ``$HEMAFLOW_CACHE_DIR``, else the default
(:func:`hemaflow.core.cache.default_cache_dir`). Exit codes follow the contract: 0 success,
1 ``verify`` found damage that is still there, 2 a usage error (``clear`` without ``--yes``, a
cache path that is not a folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import time
from pathlib import Path
from typing import Any

from hemaflow.core.cache import _KEY, EntryDamaged, EntryInfo, StepCache, default_cache_dir
from hemaflow.core.errors import UsageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"500M"``, ``"2G"``, ``"1.5GiB"``, ``"1048576"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 500M, 2G, 1048576)")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def parse_days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        days = -1.0
    if not days >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days >= 0")
    return days


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _cache(args: argparse.Namespace) -> StepCache:
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: the cache directory is not a folder")
    return StepCache(root)


def _stamp(t: float | str | None) -> str:
    if isinstance(t, str):
        try:
            t = dt.datetime.fromisoformat(t).timestamp()
        except ValueError:
            return "?"
    if t is None:
        return "?"
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def _row(e: EntryInfo) -> dict[str, Any]:
    info = e.info or {}
    return {"key": e.key, "step": info.get("step"), "component": info.get("component"), "size": e.size,
            "finished": info.get("finished"), "last_used": dt.datetime.fromtimestamp(
                e.last_used, dt.timezone.utc).isoformat(timespec="seconds"), "path": str(e.path)}


# -- commands ------------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    cache = _cache(args)
    entries = sorted(cache.entries(), key=lambda e: e.last_used, reverse=True)
    if args.json:
        print(json.dumps([_row(e) for e in entries], indent=1))
        return 0
    if not entries:
        print(f"no cache entries in {cache.root}")
        return 0
    rows = [(e.key[:12], str((e.info or {}).get("step") or "?"), str((e.info or {}).get("component") or "?"),
             human(e.size), _stamp((e.info or {}).get("finished")), _stamp(e.last_used)) for e in entries]
    head = ("KEY", "STEP", "COMPONENT", "SIZE", "FINISHED (UTC)", "LAST USED (UTC)")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.rjust(w) if i == 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    print(f"{len(entries)} entries, {human(sum(e.size for e in entries))} in {cache.root}")
    orphans = cache.orphans()
    if orphans:
        print(f"{len(orphans)} orphan work folder(s) in {cache.root / 'tmp'} (`hemaflow cache prune` removes them)")
    return 0


def _damage(cache: StepCache, e: EntryInfo) -> str | None:
    if not _KEY.match(e.key) or e.path.parent.name != e.key[:2]:
        return "not a cache entry (unexpected folder name; hemaflow leaves it alone: remove it by hand)"
    try:
        cache.check(e.key, full=True)
    except EntryDamaged as exc:
        return str(exc)
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    cache = _cache(args)
    entries = list(cache.entries())
    damaged, left = 0, 0
    for e in entries:
        problem = _damage(cache, e)
        if problem is None:
            continue
        damaged += 1
        if args.fix and _remove(cache, e):
            print(f"{e.path}: {problem} (removed)")
        else:
            left += 1
            print(f"{e.path}: {problem}")
    total = human(sum(e.size for e in entries))
    print(f"checked {len(entries)} entries ({total}) in {cache.root}: "
          + (f"{damaged} damaged" + (f", {damaged - left} removed" if args.fix else
                                     "; `hemaflow cache verify --fix` removes them") if damaged else "all intact"))
    return 1 if left else 0


def _remove(cache: StepCache, e: EntryInfo) -> bool:
    """Remove an entry; a folder that is not named like one is never touched (a mistyped
    ``--cache-dir`` must not cost a user their files)."""
    if _KEY.match(e.key) and e.path == cache.entry(e.key):
        return cache.remove(e.key)
    return False


def _stale_locks(cache: StepCache) -> list[Path]:
    """Lock files of keys that have no entry and that no run holds."""
    locks = cache.root / "locks"
    if not locks.is_dir():
        return []
    out = []
    for p in sorted(locks.glob("*.lock")):
        key = p.stem
        if _KEY.match(key) and not cache.entry(key).exists() and not cache.is_locked(key):
            out += [p, p.with_suffix(".owner")]
    return out


def cmd_prune(args: argparse.Namespace) -> int:
    cache = _cache(args)
    entries = sorted(cache.entries(), key=lambda e: e.last_used)  # least recently used first
    doomed: list[EntryInfo] = []
    if args.older_than is not None:
        cutoff = time.time() - args.older_than * 86400
        doomed = [e for e in entries if e.last_used < cutoff]
    if args.max_size is not None:
        gone = {e.path for e in doomed}
        kept = [e for e in entries if e.path not in gone]
        size = sum(e.size for e in kept)
        for e in kept:
            if size <= args.max_size:
                break
            doomed.append(e)
            size -= e.size
    orphans = cache.orphans()
    verb = "would remove" if args.dry_run else "removed"
    freed = 0
    for e in doomed:
        if args.dry_run or _remove(cache, e):
            freed += e.size
            if args.verbose or args.dry_run:
                info = e.info or {}
                print(f"{verb} {e.key[:12]} {info.get('step') or '?'} ({info.get('component') or '?'}, "
                      f"{human(e.size)}, last used {_stamp(e.last_used)})")
    if not args.dry_run:
        orphans = cache.clean_orphans()
        for p in _stale_locks(cache):
            p.unlink(missing_ok=True)
    print(f"{verb} {len(doomed)} of {len(entries)} entries ({human(freed)}) and {len(orphans)} orphan work "
          f"folder(s) in {cache.root}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    cache = _cache(args)
    all_entries = list(cache.entries())
    entries = [e for e in all_entries if _KEY.match(e.key) and e.path == cache.entry(e.key)]
    size = sum(e.size for e in entries)
    if not args.yes:
        raise UsageError(f"would remove all {len(entries)} entries ({human(size)}) in {cache.root}; "
                         "add --yes to do it")
    removed = sum(_remove(cache, e) for e in entries)
    orphans = cache.clean_orphans(max_age=0)  # work folders of live runs stay: those runs still need them
    for p in _stale_locks(cache):
        p.unlink(missing_ok=True)
    (cache.root / "hashes.json").unlink(missing_ok=True)
    print(f"removed {removed} entries ({human(size)}) and {len(orphans)} work folder(s) from {cache.root}")
    stray = len(all_entries) - len(entries)
    if stray:
        print(f"left {stray} folder(s) in {cache.root / 'steps'} that are not cache entries")
    return 0 if removed == len(entries) else 1


# -- parser --------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """Register ``hemaflow cache`` on the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", metavar="DIR",
                        help="the cache directory (default: $HEMAFLOW_CACHE_DIR, else ~/.cache/hemaflow)")
    c = sub.add_parser("cache", help="list, verify, prune or clear the step cache")
    csub = c.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True

    ls = csub.add_parser("ls", parents=[common], help="list entries: key, step, component, size, dates")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ls)

    v = csub.add_parser("verify", parents=[common],
                        help="hash every entry's files against its manifest (exit 1 if damaged)")
    v.add_argument("--fix", action="store_true", help="remove damaged entries (rerunning recomputes them)")
    v.set_defaults(func=cmd_verify)

    p = csub.add_parser("prune", parents=[common],
                        help="remove entries unused for DAYS or beyond a size budget, and orphan work folders")
    p.add_argument("--older-than", type=parse_days, metavar="DAYS", help="remove entries not used for DAYS days")
    p.add_argument("--max-size", type=parse_size, metavar="SIZE",
                   help="remove least recently used entries until the cache is at most SIZE (e.g. 20G)")
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per removed entry")
    p.set_defaults(func=cmd_prune)

    cl = csub.add_parser("clear", parents=[common], help="remove every entry (needs --yes)")
    cl.add_argument("--yes", action="store_true", help="really remove everything")
    cl.set_defaults(func=cmd_clear)
