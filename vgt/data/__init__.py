"""Prepared datasets without Ray: row cleaning (`clean`), raw readers (`sources`), the folder
layout and manifest (`layout`), the training-side reader (`reader`), images and latent columns."""
from .images import center_crop, decode_image, to_pixels
from .layout import LATENT_FIELDS, PART_SCHEMA, REJECT_SCHEMA
from .reader import LatentMismatchError, Part, PreparedDataset, read_latents

__all__ = ["PreparedDataset", "Part", "LatentMismatchError", "read_latents", "decode_image", "center_crop",
           "to_pixels", "PART_SCHEMA", "LATENT_FIELDS", "REJECT_SCHEMA"]
