"""Print what a lifecycle run would do, without running anything (no Prefect, no training).

    python -m flows.plan [overrides]          # the same overrides as flows.lifecycle
    python -m flows.plan --json [overrides]   # the plan as JSON

Each stage with its cache key, its state (cached, in store, resumable, running, corrupt,
missing, refresh, or unknown until its inputs are computed) and its inputs; the config keys
that differ from the last lifecycle run of this name; the stages a run would compute.
Exit status 0, or 2 on a configuration error.
"""

from __future__ import annotations

import json
import sys

from lm_tasks.config import ConfigError, load_config
from lm_tasks.plan import make_plan, render


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(args):
        print(__doc__.strip())
        return 0
    as_json = "--json" in args
    overrides = [a for a in args if a != "--json"]
    flags = [a for a in overrides if a.startswith("-")]
    if flags:
        print(f"plan: unknown flag {flags[0]} (a sweep, -m, is planned one job at a time); see --help",
              file=sys.stderr)
        return 2
    try:
        plan = make_plan(load_config(overrides))
    except (ConfigError, FileNotFoundError) as err:
        print(f"Configuration error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(plan.as_dict(), indent=2, default=str) if as_json else render(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
