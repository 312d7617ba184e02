#!/bin/sh
# Install the GPU check from this bundle (no network) into a Python that has its own torch, then run it.
#
#   sh run.sh [--python PY] [--dry-run] [--skip-install] [--install-only] [-- GPU-CHECK FLAGS]
#
# --python PY      the interpreter with the machine's torch (default: $PYTHON, else python3); the packages
#                  go into its environment (use a venv or conda env of your own to keep them apart)
# --dry-run        show what pip would install, install nothing, do not run the check
# --skip-install   run the check with what PY already has
# --install-only   install, do not run the check
# Flags after -- go to `python -m vgt.gpucheck` (default: --out gpu-check). Exit status: the check's
# (0 passed, 1 a check failed, 2 refused: e.g. no CUDA); 2 also when PY cannot use this bundle.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-python3}
DRY= SKIP= ONLY=
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --dry-run) DRY=--dry-run; shift ;;
    --skip-install) SKIP=1; shift ;;
    --install-only) ONLY=1; shift ;;
    --) shift; break ;;
    *) echo "error: unknown option $1 (run.sh [--python PY] [--dry-run] [--skip-install] [--install-only] [-- FLAGS])" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || set -- --out gpu-check

fail() { echo "error: $*" >&2; exit 2; }
pip_() {  # the Python's own pip, else the bundled pip wheel (a wheel of pip runs as is)
  if "$PY" -m pip --version >/dev/null 2>&1; then "$PY" -m pip "$@"
  else "$PY" "$(ls "$HERE"/wheels/pip-*.whl | head -n 1)/pip" "$@"; fi
}
command -v "$PY" >/dev/null 2>&1 || fail "no Python at '$PY' (pass --python)"
"$PY" -c 'import torch' 2>/dev/null || fail "$PY cannot import torch: install the machine's CUDA build of torch first"
if [ -z "$SKIP" ]; then
  VERSION=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  grep -qx "$VERSION" "$HERE/python-versions.txt" ||
    fail "this bundle holds wheels for Python $(tr '\n' ' ' < "$HERE/python-versions.txt")but $PY is $VERSION: rebuild it with make gpu-bundle GPU_PYTHON=$VERSION"
  if ! grep -q '^numpy' "$HERE/requirements.txt"; then
    "$PY" -c 'import numpy, PIL' 2>/dev/null ||
      fail "$PY lacks numpy or pillow and this bundle does not pack them: rebuild it with make gpu-bundle GPU_BUNDLE_FLAGS=--with-numpy-pillow"
  fi
  pip_ install --no-index --find-links "$HERE/wheels" --only-binary=:all: $DRY -r "$HERE/requirements.txt"
  pip_ install --no-index --no-deps --force-reinstall $DRY "$HERE"/wheels/vgt-*.whl
fi
[ -z "$DRY" ] && [ -z "$ONLY" ] || exit 0
exec "$PY" -m vgt.gpucheck "$@"
