"""`python -m vgt.gpucheck`: the GPU check without the `vgt` command (e.g. from the wheel bundle)."""
from vgt.gpucheck.cli import main

raise SystemExit(main())
