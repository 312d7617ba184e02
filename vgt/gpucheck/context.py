"""What every part of the GPU check shares: the offline config, the device, timers and the report rows."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable

import torch

from vgt.config import VGTConfig, apply_overrides
from vgt.presets import get_preset

# Random weights from the preset's architecture numbers (vgt.backbones.real_configs), nothing from the hub;
# the built-in tokenizer (its ids are valid in every real vocabulary; prompts tokenise to similar lengths).
OFFLINE = {"ar.backbone.pretrained": None, "ae.backbone.pretrained": None, "ae.decoder.pretrained": None,
           "ar.backbone.tokenizer": "tiny-bpe"}

# Dense bf16 tensor-core peaks (TFLOPS) by device name, most specific first: the MFU denominator.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
                    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
                    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0))


def check_config(preset: str, overrides: list[str] = ()) -> VGTConfig:
    """The preset with `overrides` (`--set`), then `OFFLINE` (the check never loads weights)."""
    return apply_overrides(get_preset(preset, list(overrides)), dict(OFFLINE))


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    """(peak bf16 TFLOPS, where it came from) for the MFU; None when unknown (CPU, an unlisted GPU)."""
    if given is not None:
        return given, "--peak-tflops"
    if device.type != "cuda":
        return None, "no peak for a CPU"
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops, f"{key} dense bf16"
    return None, f"unknown peak for {name!r}: pass --peak-tflops"


@dataclasses.dataclass
class Check:
    """The run: config, device, the dtype GPU work computes in, and the table rows gathered so far."""

    cfg: VGTConfig
    device: torch.device
    compute_dtype: torch.dtype
    train_batch: int
    train_steps: int
    ae_batch: int
    peak_tflops: float | None
    peak_source: str
    rows: list[dict] = dataclasses.field(default_factory=list)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.cfg.data.resolution // 28  # every backbone's stride (patch 14 x merge 2)
        return side, side

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
        """Median wall time of `fn` after `warmup` calls, the device finished each time."""
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def row(self, check: str, case: str, value, unit: str = "", ok: bool | None = None, note: str = "") -> None:
        """One line of the table (and of the JSON's `rows`); `ok` None: a measurement, not a pass/fail."""
        self.rows.append({"check": check, "case": case, "value": value, "unit": unit, "ok": ok, "note": note})


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in fp32 (Frobenius)."""
    x, ref = x.float(), ref.float()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-30))
