"""Shared plumbing for `python -m ray_jobs.X` and `vgt X`: one parser definition per command, one
flag convention (README "The command line"), one way errors reach the user."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from vgt.errors import UsageError, VGTError

# Kept for the entry modules: a command-line mistake (exit 2).
UserError = UsageError


def build_parser(module: ModuleType, prog: str) -> argparse.ArgumentParser:
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def add_address(parser: argparse.ArgumentParser) -> None:
    """`--address`: every command that uses Ray takes it the same way."""
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to use, e.g. ray://head:10001 or auto (default: RAY_ADDRESS if set, "
                             "else a new local cluster)")


def add_overrides(parser: argparse.ArgumentParser, examples: str) -> None:
    """`--set KEY=VALUE ...` (repeatable); the old positional KEY=VALUE form is a hidden alias."""
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"config overrides (values parse as JSON, else strings), {examples}")
    parser.add_argument("legacy_overrides", nargs="*", metavar="KEY=VALUE", help=argparse.SUPPRESS)


def hidden_alias(parser: argparse.ArgumentParser, old: str, new: str, **kwargs) -> None:
    """`old` still works (one release) and stores into `new`'s destination; not shown in --help."""
    dest = new.lstrip("-").replace("-", "_")
    parser.add_argument(old, dest=dest, help=argparse.SUPPRESS, **kwargs)


def renamed_flag(parser: argparse.ArgumentParser, old: str, new: str, meaning: str) -> None:
    """`old` now means something else elsewhere (or is ambiguous), so it is no alias: using it is a
    usage error (exit 2) that names the new flag, e.g. "--steps is now --num-steps (flow-head steps
    per token)". Not shown in --help."""

    class Renamed(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} is now {new} ({meaning})")

    parser.add_argument(old, action=Renamed, nargs="?", dest=f"renamed_{old.lstrip('-').replace('-', '_')}",
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def at_least(minimum: int, kind=int):
    """argparse `type=`: a number >= `minimum` (else a usage error naming the flag)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def defer_ray(address: str | None) -> None:
    """For commands whose library starts Ray only once there is work (so that input mistakes fail
    fast, without a cluster): the library's `ray.init()` then connects to `address` through
    RAY_ADDRESS. Without `address`, RAY_ADDRESS as set, else a new local cluster."""
    if address:
        os.environ["RAY_ADDRESS"] = address


def connect_ray(address: str | None) -> None:
    """Connect to `address` (else RAY_ADDRESS, else start a local cluster), once per process."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS"))


def execute(module: ModuleType, args: argparse.Namespace) -> int:
    """Run a command; a `VGTError` becomes one line on stderr and its exit status, not a traceback."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "legacy_overrides", None):
        args.overrides = list(args.overrides) + list(args.legacy_overrides)
    try:
        return int(module.run(args) or 0)
    except VGTError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_status
    except FileNotFoundError as e:  # a missing input the library reached before checking for it
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main_for(module: ModuleType, argv: list[str] | None = None) -> int:
    """`python -m ray_jobs.X` entry: same flags as `vgt X`."""
    spec = getattr(module, "__spec__", None)  # under `python -m`, __name__ is "__main__"
    name = (spec.name if spec else module.__name__).rsplit(".", 1)[-1]
    args = build_parser(module, f"python -m ray_jobs.{name}").parse_args(argv)
    return execute(module, args)
