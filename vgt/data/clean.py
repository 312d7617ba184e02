"""Per-row cleaning for `vgt prep` (no Ray): caption and image checks, RGB conversion, resize.

Every failure raises `Reject(reason, detail)`; `reason` is one of `REASONS`, so the manifest can
count each kind exactly. The image size is checked from the header, before any pixel is decoded:
PIL itself only warns between 1x and 2x `Image.MAX_IMAGE_PIXELS` and decodes the rest.
"""
from __future__ import annotations

import io
import unicodedata
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from vgt.config import DataConfig

# Reasons a row (or a whole input file) is rejected; the manifest counts each one.
MISSING_IMAGE = "missing_image"          # a sample/row/index entry without image bytes or file
MISSING_CAPTION = "missing_caption"      # no caption at all
EMPTY_CAPTION = "empty_caption"          # only whitespace/control characters
CAPTION_TOO_LONG = "caption_too_long"    # longer than max_caption_chars after cleanup
CAPTION_NOT_UTF8 = "caption_not_utf8"    # bytes that are not valid UTF-8 (or lone surrogates)
TOO_MANY_PIXELS = "too_many_pixels"      # header says width*height > max_pixels (never decoded)
UNDECODABLE_IMAGE = "undecodable_image"  # no image format PIL knows (random bytes)
CORRUPT_IMAGE = "corrupt_image"          # the header parses but the pixels do not (truncated file)
UNSUPPORTED_MODE = "unsupported_mode"    # a pixel mode with no RGB conversion
TOO_SMALL = "too_small"                  # shorter side < min_side
BAD_ASPECT = "bad_aspect"                # longer/shorter side > max_aspect
DUPLICATE_KEY = "duplicate_key"          # the same key twice in one input file
BAD_RECORD = "bad_record"                # an index entry that is not a JSON object
TRUNCATED_SHARD = "truncated_shard"      # an input file ends mid-record; that record is lost
UNREADABLE_SHARD = "unreadable_shard"    # an input file cannot be opened/parsed at all
UNEXPECTED_ERROR = "unexpected_error"    # any other exception on one row (its type is in the detail)
REASONS = (MISSING_IMAGE, MISSING_CAPTION, EMPTY_CAPTION, CAPTION_TOO_LONG, CAPTION_NOT_UTF8,
           TOO_MANY_PIXELS, UNDECODABLE_IMAGE, CORRUPT_IMAGE, UNSUPPORTED_MODE, TOO_SMALL, BAD_ASPECT,
           DUPLICATE_KEY, BAD_RECORD, TRUNCATED_SHARD, UNREADABLE_SHARD, UNEXPECTED_ERROR)

IMAGE_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
_HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class Reject(Exception):
    """A row that does not make it into the prepared dataset, and why."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail[:300]


def clean_caption(raw: bytes | str | None, max_chars: int) -> str:
    """Strict UTF-8, control characters dropped, whitespace runs collapsed to one space."""
    if raw is None:
        raise Reject(MISSING_CAPTION)
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Reject(CAPTION_NOT_UTF8, str(e)) from None
    try:  # a str can still hold lone surrogates (e.g. from a JSON "\udcff" escape)
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Reject(CAPTION_NOT_UTF8, str(e)) from None
    # Control characters (category Cc) become spaces, so "a\x00b" does not glue words together.
    text = "".join(" " if unicodedata.category(c) == "Cc" else c for c in raw)
    text = " ".join(text.split())
    if not text:
        raise Reject(EMPTY_CAPTION)
    if len(text) > max_chars:
        raise Reject(CAPTION_TOO_LONG, f"{len(text)} > {max_chars} characters")
    return text


def open_checked(data: bytes, cfg: DataConfig) -> Image.Image:
    """A lazily opened image whose header passed the pixel, side and aspect checks (not decoded)."""
    with warnings.catch_warnings():
        # Our max_pixels is the hard limit; PIL's own 1x-2x warning would only add noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:  # above 2x PIL's limit: certainly above ours too
            raise Reject(TOO_MANY_PIXELS, str(e)) from None
        except Exception as e:  # UnidentifiedImageError, and plugins' struct/index errors on junk headers
            raise Reject(UNDECODABLE_IMAGE, f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise Reject(TOO_MANY_PIXELS, f"{w}x{h} > {cfg.max_pixels} pixels")
    if min(w, h) < cfg.min_side:
        raise Reject(TOO_SMALL, f"{w}x{h}, min side {cfg.min_side}")
    if max(w, h) / min(w, h) > cfg.max_aspect:
        raise Reject(BAD_ASPECT, f"{w}x{h}, max aspect {cfg.max_aspect}")
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Decode and convert any mode to RGB; transparency is composited on white."""
    try:
        img.load()
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/struct.error on bad data
        raise Reject(CORRUPT_IMAGE, str(e)) from None
    try:
        img = ImageOps.exif_transpose(img)  # phone photos are often stored rotated + an EXIF tag
    except Exception:  # a damaged EXIF block: the pixels are fine, keep them as stored
        pass
    try:
        if img.mode in _HIGH_BIT_MODES:  # 16/32-bit grey: scale to 8 bits instead of clipping at 255
            img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        if img.mode in _ALPHA_MODES or "transparency" in img.info:  # palette/grey/RGB + tRNS too
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as e:  # e.g. LAB/HSV or odd plugin modes PIL cannot convert
        raise Reject(UNSUPPORTED_MODE, f"{img.mode}: {e}") from None


def shorter_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) with the shorter side equal to `side` and the aspect ratio kept (rounded)."""
    if width <= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def resize_shorter(img: Image.Image, side: int) -> Image.Image:
    """Shorter side -> `side`, no crop. PIL's bicubic widens its kernel when shrinking (antialias)."""
    size = shorter_side_size(*img.size, side)
    if size == img.size:
        return img
    return img.resize(size, Image.Resampling.BICUBIC)


def encode_image(img: Image.Image, image_format: str, jpeg_quality: int) -> bytes:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    buf = io.BytesIO()
    if image_format == "jpeg":
        img.save(buf, "JPEG", quality=jpeg_quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def clean_sample(image: bytes | None, caption: bytes | str | None, cfg: DataConfig) -> dict:
    """One raw sample -> {caption, image, width, height} as stored, or `Reject`.

    Order: presence, caption (cheap), image header, decode + convert, resize, encode.
    """
    if not image:
        raise Reject(MISSING_IMAGE)
    text = clean_caption(caption, cfg.max_caption_chars)
    img = resize_shorter(to_rgb(open_checked(image, cfg)), cfg.resolution)
    return {"caption": text, "image": encode_image(img, cfg.image_format, cfg.jpeg_quality),
            "width": img.width, "height": img.height}
