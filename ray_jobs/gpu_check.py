"""Check a GPU: AR training step time, tokens/s and MFU, FSDP2 on one GPU, bf16 vs fp32 losses, the
attention kernels' outputs side by side, sampling latency at 1/4/16 tokens per step and AE encode/decode
throughput, with random weights at a real preset's sizes; writes gpu-check.json and gpu-check.md.

Needs no Ray (the check is `vgt.gpucheck`, also `python -m vgt.gpucheck`); refuses without CUDA unless
--allow-cpu (with --preset tiny: the smoke run the test-suite does). README "Check a GPU".
"""
from __future__ import annotations

from vgt.gpucheck import add_arguments, run

__all__ = ["add_arguments", "run"]

if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
