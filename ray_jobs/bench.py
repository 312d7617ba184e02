"""Run the registered benchmarks (pipelines/bench) and print one table.

Each benchmark measures its alternatives side by side in one run and reports ratios. Those that
use Ray start (and stop) their own local cluster unless --address or RAY_ADDRESS names one.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_address, hidden_alias

    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all); see --list")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--quick", action="store_true", help="smaller cases (a smoke run)")
    parser.add_argument("--out", metavar="FILE", help="also write the rows as JSON to FILE (local or s3://)")
    hidden_alias(parser, "--json", "--out")
    add_address(parser)  # without it (and RAY_ADDRESS): each Ray benchmark starts and stops a local cluster


def run(args: argparse.Namespace) -> int:
    import json
    import os

    from pipelines.bench import discover, format_table, run_all
    from ray_jobs._entry import UserError, connect_ray
    from vgt import io as vio

    if args.list:
        for name, module in discover().items():
            print(f"{name:<20}{(module.__doc__ or '').strip().splitlines()[0] if module.__doc__ else ''}")
        return 0
    unknown = sorted(set(args.names) - set(discover()))
    if unknown:
        raise UserError(f"unknown benchmark(s) {unknown}; available: {sorted(discover())} (see --list)")
    if args.address or os.environ.get("RAY_ADDRESS"):  # the benchmarks then use this cluster and leave it up
        connect_ray(args.address)
    rows = run_all(args.names or None, quick=args.quick)
    print(format_table(rows))
    if args.out:
        vio.write_bytes(args.out, json.dumps(rows, indent=2).encode())
    return 0


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
