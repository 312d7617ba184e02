"""vgt: Visual Generation Tuning as a library. Heavy imports (torch, transformers) happen lazily:
`from vgt import VGTPipeline, VGTAutoencoder, get_preset` loads only what is asked for."""
from __future__ import annotations

import importlib

_LAZY = {"VGTPipeline": "vgt.pipeline", "VGTAutoencoder": "vgt.ae", "get_preset": "vgt.presets"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'vgt' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
