"""Run the registered benchmarks (pipelines/bench) and print one table.

Each benchmark measures its alternatives side by side in one run and reports ratios.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="smaller cases (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")


def run(args: argparse.Namespace) -> int:
    import json

    from ray_jobs._entry import UserError
    from pipelines.bench import discover, format_table, run_all

    if args.list:
        for name, module in discover().items():
            print(f"{name:<20}{(module.__doc__ or '').strip().splitlines()[0] if module.__doc__ else ''}")
        return 0
    try:
        rows = run_all(args.names or None, quick=args.quick)
    except KeyError as e:
        raise UserError(e.args[0]) from e
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
