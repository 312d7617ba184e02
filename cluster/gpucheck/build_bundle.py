"""`make gpu-bundle`: a folder (and a .tar.gz of it) of wheels that runs `vgt gpu-check` on a GPU machine
without network, beside that machine's own torch (README "Check a GPU").

It holds the project as a wheel (installed without its dependencies: the check needs no Ray, pyarrow or
s3fs), the libraries the check imports at the versions this checkout is tested with (transformers,
tokenizers, safetensors, huggingface-hub, diffusers) with everything they need, and pip itself, as
binary wheels from PyPI (`pip download --only-binary=:all:`) for each target Python version on
manylinux >= 2.17 (glibc 2.28 for some wheels) x86_64 or aarch64. Platform wheels (tokenizers,
safetensors, regex, pyyaml, ...) are abi3 where their projects ship abi3, else one per Python version.
numpy and pillow are left out by default (every torch setup worth a GPU has them, and they are the
largest wheels: ~23 MB per Python version); `--with-numpy-pillow` packs them too. torch is never packed.
`run.sh` (copied in) installs from the folder with `pip --no-index` and runs the check.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# What `vgt.gpucheck` imports beyond torch, pinned to this environment's versions (what the tests ran).
PINNED = ("transformers", "tokenizers", "safetensors", "huggingface-hub", "diffusers")
BIG = ("numpy", "pillow")  # required by transformers / diffusers; the machine's own are used when present
MANYLINUX = ("manylinux_2_28", "manylinux_2_17", "manylinux2014")
PROJECT_FILES = ("pyproject.toml", "README.md", "vgt", "pipelines", "ray_jobs")


def requirements(with_big: bool) -> list[str]:
    reqs = [f"{name}=={importlib.metadata.version(name)}" for name in PINNED]
    return reqs + (list(BIG) if with_big else [])  # unpinned: a machine's own numpy / pillow stay


def project_wheel(dest: Path) -> Path:
    """The project's wheel, built offline from a copy of the sources (so no build/ lands in the checkout)."""
    with tempfile.TemporaryDirectory(prefix="vgt-wheel-") as tmp:
        for name in PROJECT_FILES:
            src = REPO / name
            if src.is_dir():
                shutil.copytree(src, Path(tmp) / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, Path(tmp) / name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(dest), tmp], check=True)
    (wheel,) = dest.glob("vgt-*.whl")
    return wheel


def download(reqs: list[str], dest: Path, python: str, arch: str) -> None:
    platforms = [arg for tag in MANYLINUX for arg in ("--platform", f"{tag}_{arch}")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--implementation", "cp",
                    "--python-version", python, *platforms, "-d", str(dest), "pip", *reqs], check=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, pythons: list[str], arch: str, with_big: bool, fetch: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    wheels = out / "wheels"
    wheels.mkdir(parents=True)
    reqs = requirements(with_big)
    project = project_wheel(wheels)
    if fetch:
        for python in pythons:
            download(reqs, wheels, python, arch)
        if not with_big:  # pulled in as dependencies; the machine's own are used (run.sh checks they import)
            for wheel in wheels.iterdir():
                if wheel.name.split("-")[0].lower() in BIG:
                    wheel.unlink()
    (out / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (out / "python-versions.txt").write_text("\n".join(pythons) + "\n")
    shutil.copy2(Path(__file__).with_name("run.sh"), out / "run.sh")
    manifest = {"project": project.name, "requirements": reqs, "python_versions": pythons, "arch": arch,
                "manylinux": list(MANYLINUX), "numpy_pillow_packed": with_big, "downloaded": fetch,
                "wheels": {w.name: sha256(w) for w in sorted(wheels.iterdir())},
                "bytes": sum(w.stat().st_size for w in wheels.iterdir())}
    (out / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    with tarfile.open(f"{out}.tar.gz", "w:gz") as tar:
        tar.add(out, arcname=out.name)
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="dist/vgt-gpu-bundle", help="bundle folder (also OUT.tar.gz)")
    parser.add_argument("--python", nargs="+", default=["3.11", "3.12", "3.13"],
                        help="target Python versions (default: 3.11 3.12 3.13; the transformers pinned here "
                             "needs >= 3.11)")
    parser.add_argument("--arch", default="x86_64", choices=["x86_64", "aarch64"], help="target CPU (default: x86_64)")
    parser.add_argument("--with-numpy-pillow", action="store_true", help="pack numpy and pillow too")
    parser.add_argument("--no-download", action="store_true",
                        help="only the project wheel, requirements and run.sh (offline; for tests)")
    args = parser.parse_args()
    try:
        manifest = build(Path(args.out), args.python, args.arch, args.with_numpy_pillow, not args.no_download)
    except subprocess.CalledProcessError as err:
        print(f"error: {' '.join(err.cmd[2:4])} failed (exit {err.returncode}; pip's message above)", file=sys.stderr)
        return 1
    print(f"gpu-bundle: {len(manifest['wheels'])} wheels, {manifest['bytes'] / 2**20:.1f} MB, for Python "
          f"{' '.join(args.python)} on manylinux {args.arch}: {args.out}/ and {args.out}.tar.gz")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
