"""Prepared datasets without Ray: row cleaning (`clean`), raw readers (`sources`), the folder
layout (`layout`), the training-side reader (`reader`), images and latent columns.

The names below load on first use, so a prep worker importing `vgt.data.clean` does not pay for
the reader's dependencies (torch, via vgt.artifacts).
"""
import importlib

_EXPORTS = {
    "PreparedDataset": "reader", "Part": "reader", "LatentMismatchError": "reader", "read_latents": "reader",
    "load_manifest": "reader", "decode_image": "images", "center_crop": "images", "to_pixels": "images",
    "to_uint8": "images",
    "PART_SCHEMA": "layout", "LATENT_FIELDS": "layout", "REJECT_SCHEMA": "layout",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vgt.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
