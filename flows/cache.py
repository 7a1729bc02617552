"""Look after the stage cache (no Prefect, no training); the same overrides as the flows pick
the store (`cache.store=...`) and the MLflow store (`tracking.tracking_uri=...`).

    python -m flows.cache list [--json] [--no-runs] [overrides]
    python -m flows.cache verify [--fix] [overrides]
    python -m flows.cache gc [--older-than 30d] [--max-size 20G] [--remote] [--dry-run] [overrides]

`list` shows every entry with its stage, key, size, last use, where it is (local, store)
and the MLflow runs that used it; `verify` re-hashes every local entry (`--fix` removes the
ones that fail); `gc` removes the least recently used entries, never one that a registered
model version needs. See lm_tasks/cache_admin.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from lm_tasks import cache_admin
from lm_tasks.cache import StageCache
from lm_tasks.config import ConfigError, load_config


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flows.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="every entry, oldest use first")
    listing.add_argument("--json", action="store_true", help="the entries as JSON")
    listing.add_argument("--no-runs", action="store_true", help="skip the MLflow runs and registered versions")
    check = commands.add_parser("verify", help="re-hash every file of every local entry")
    check.add_argument("--fix", action="store_true", help="remove the entries that fail")
    gc = commands.add_parser("gc", help="remove old entries, never one a registered model version needs")
    gc.add_argument("--older-than", type=cache_admin.parse_days, metavar="AGE",
                    help="entries unused for longer than AGE (30d, 12h, 2w)")
    gc.add_argument("--max-size", type=cache_admin.parse_size, metavar="SIZE",
                    help="then the least recently used until the rest fits in SIZE (500M, 20G)")
    gc.add_argument("--keep-recent", type=cache_admin.parse_days, metavar="AGE", default=cache_admin.KEEP_RECENT_DAYS,
                    help="never remove an entry used within AGE: a running lifecycle may be reading it (default 1d)")
    gc.add_argument("--remote", action="store_true", help="with a URL store, collect the store's entries too")
    gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    for command in (listing, check, gc):
        command.add_argument("overrides", nargs="*", help="config overrides, as for python -m flows.lifecycle")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_config(args.overrides)
    except ConfigError as err:
        print(f"Configuration error: {err}", file=sys.stderr)
        return 2
    cache = StageCache(cfg.cache)
    if args.command == "verify":
        problems = cache_admin.verify_entries(cache, fix=args.fix)
        for entry, problem in problems:
            print(f"{'removed' if args.fix else 'corrupt'}: {entry.stage} {entry.key[:12]}: {problem}")
        print(f"{len(problems)} corrupt entries" + ("" if problems else ": every local entry matches its manifest"))
        return 1 if problems and not args.fix else 0
    entries = cache_admin.list_entries(cache)
    if args.command == "list":
        if not args.no_runs:
            try:
                cache_admin.attach_runs(cfg, entries)
                cache_admin.attach_registered(cfg, entries)
            except Exception as err:  # the listing stands without them
                print(f"(MLflow runs and registered versions not shown: {cfg.tracking.tracking_uri} could not be "
                      f"read: {type(err).__name__}: {err})", file=sys.stderr)
        print(json.dumps([asdict(e) for e in entries], indent=2) if args.json else cache_admin.render(entries))
        return 0
    if args.older_than is None and args.max_size is None:
        print("gc: say what to remove: --older-than AGE and/or --max-size SIZE", file=sys.stderr)
        return 2
    try:
        cache_admin.attach_registered(cfg, entries)
    except Exception as err:
        print(f"gc: the model registry at {cfg.tracking.tracking_uri} could not be read ({type(err).__name__}: "
              f"{err}), so the entries registered versions need are unknown: nothing removed", file=sys.stderr)
        return 1
    result = cache_admin.collect(cache, entries, args.older_than, args.max_size, args.remote, args.dry_run,
                                 args.keep_recent)
    verb = "would remove" if args.dry_run else "removed"
    for entry in result.removed:
        print(f"{verb}: {entry.stage} {entry.key[:12]} ({cache_admin.human_size(entry.size)}, "
              f"unused for {cache_admin.human_age(entry.age_days)})")
    for entry in result.kept_needed:
        print(f"kept: {entry.stage} {entry.key[:12]}, needed by {', '.join(entry.needed_by)}")
    for entry in result.skipped_busy:
        print(f"skipped: {entry.stage} {entry.key[:12]}, used within --keep-recent or being computed")
    print(f"{verb} {len(result.removed)} entries: {cache_admin.human_size(result.size_before)} -> "
          f"{cache_admin.human_size(result.size_after)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
