"""Shared plumbing for `python -m ray_jobs.X` and `vgt X`: one parser definition per command."""
from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType


class UserError(Exception):
    """A mistake in the command line or inputs: printed as one line, exit code 2, no traceback."""


def build_parser(module: ModuleType, prog: str) -> argparse.ArgumentParser:
    doc = (module.__doc__ or "").strip()
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    return parser


def execute(module: ModuleType, args: argparse.Namespace) -> int:
    """Run a command; known error types become one clear line instead of a traceback."""
    from vgt.artifacts import ArtifactError
    from vgt.config import ConfigError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except (UserError, ConfigError, ArtifactError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main_for(module: ModuleType, argv: list[str] | None = None) -> int:
    """`python -m ray_jobs.X` entry: same flags as `vgt X`."""
    spec = getattr(module, "__spec__", None)  # under `python -m`, __name__ is "__main__"
    name = (spec.name if spec else module.__name__).rsplit(".", 1)[-1]
    args = build_parser(module, f"python -m ray_jobs.{name}").parse_args(argv)
    return execute(module, args)
