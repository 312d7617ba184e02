"""Run provenance: what produced an artifact (config, code version, packages, seeds, host)."""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import socket
import subprocess
from pathlib import Path
from typing import Any

PACKAGES = ("vgt", "torch", "transformers", "diffusers", "safetensors", "ray", "pyarrow", "numpy", "pillow")


def git_sha() -> str | None:
    """The commit of the checkout vgt runs from (None outside git, e.g. an installed wheel)."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution in `names` (None: not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect_provenance(config: dict | None = None, seeds: dict[str, Any] | None = None,
                       **extra: Any) -> dict[str, Any]:
    """A JSON-able record to store next to an artifact or run."""
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "git_sha": git_sha(),
        "packages": package_versions(),
        "python": platform.python_version(),
        "host": socket.gethostname(),
        "seeds": seeds or {},
        "config": config,
        **extra,
    }
