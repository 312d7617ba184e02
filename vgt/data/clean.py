"""Per-row cleaning for `vgt prep` (no Ray): caption and image checks, RGB conversion, resize.

Every failure raises `Reject(reason, detail)`; `reason` is one of `REASONS`, so the manifest can
count each kind exactly. The image size is checked from the header, before any pixel is decoded:
PIL itself only warns between 1x and 2x `Image.MAX_IMAGE_PIXELS` and decodes the rest.
"""
from __future__ import annotations

import io
import unicodedata
import warnings

from PIL import ExifTags, Image, UnidentifiedImageError

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
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}
# Reduced decoding: the final bicubic step always shrinks by at least this factor after a box
# reduction (PIL's `reducing_gap`; 2 is its thumbnail default, "very close to fair resampling").
REDUCING_GAP = 2.0
# Reduced JPEG decoding goes to 1/2 or 1/4 scale, not 1/8: libjpeg's 1/8 keeps only each block's
# mean (a box filter that aliases); at a 112 px target it cost up to 6 dB PSNR against the full path.
MAX_DRAFT_SCALE = 4


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


def decode_resized(img: Image.Image, side: int, reduced: bool = True) -> Image.Image:
    """An image from `open_checked` -> RGB, shorter side `side` (never cropped), EXIF orientation applied.

    The work happens in the stored orientation and the EXIF turn comes last, on the small image: a
    90-degree turn swaps the target's width and height exactly as it swaps the source's (the shorter
    side is the same either way), so the draft request and the resize need no orientation at all.

    `reduced` skips decoding pixels the resize would throw away: a JPEG at least twice the target is
    decoded by libjpeg at 1/2 or 1/4 scale (draft mode: the largest reduction that still covers the
    target; `MAX_DRAFT_SCALE`), and the resize reads the region draft returns (the reduced image's
    last row/column covers only part of a source block). Other formats (PNG, WebP) shrink first by an
    integer box reduction while the rest still spans `REDUCING_GAP`x. Either way the last step is the
    same antialiased bicubic resize; `reduced=False` is the plain full decode + resize.
    """
    size = shorter_side_size(*img.size, side)
    stored = img.size
    draft = img.draft(None, _draft_request(stored, size)) if reduced else None  # None: not a JPEG
    box = draft[1] if draft and img.size != stored else None
    img, transpose = to_rgb(img)
    if img.size != size:  # PIL's bicubic widens its kernel when shrinking (antialiased)
        img = img.resize(size, Image.Resampling.BICUBIC, box=box, reducing_gap=REDUCING_GAP if reduced else None)
    return img if transpose is None else img.transpose(transpose)


def _draft_request(stored: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The size to ask draft for: `size`, or larger where that would reduce by more than
    `MAX_DRAFT_SCALE` (draft picks the largest 1/s with stored // request >= s in both axes)."""
    return max(size[0], stored[0] // MAX_DRAFT_SCALE), max(size[1], stored[1] // MAX_DRAFT_SCALE)


def to_rgb(img: Image.Image) -> tuple[Image.Image, Image.Transpose | None]:
    """Decode and convert any mode to RGB (transparency composited on white), in the stored
    orientation; also the transpose the EXIF orientation tag asks for (None: none or unreadable)."""
    try:
        img.load()
    except Exception as e:  # PIL raises OSError/SyntaxError/ValueError/struct.error on bad data
        raise Reject(CORRUPT_IMAGE, str(e)) from None
    try:  # phone photos are often stored rotated + an EXIF tag (ImageOps.exif_transpose's table)
        transpose = _EXIF_TRANSPOSE.get(img.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a damaged EXIF block: the pixels are fine, keep them as stored
        transpose = None
    try:
        if img.mode in _HIGH_BIT_MODES:  # 16/32-bit grey: scale to 8 bits instead of clipping at 255
            img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        if img.mode in _ALPHA_MODES or "transparency" in img.info:  # palette/grey/RGB + tRNS too
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB"), transpose
        return (img if img.mode == "RGB" else img.convert("RGB")), transpose  # no copy of an RGB image
    except (ValueError, OSError) as e:  # e.g. LAB/HSV or odd plugin modes PIL cannot convert
        raise Reject(UNSUPPORTED_MODE, f"{img.mode}: {e}") from None


def shorter_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(w, h) with the shorter side equal to `side` and the aspect ratio kept (rounded). Symmetric:
    swapping width and height swaps the result, which `decode_resized` relies on."""
    if width <= height:
        return side, max(1, round(height * side / width))
    return max(1, round(width * side / height)), side


def encode_image(img: Image.Image, image_format: str, jpeg_quality: int) -> bytes:
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(IMAGE_FORMATS)}, got {image_format!r}")
    buf = io.BytesIO()
    if image_format == "jpeg":
        img.save(buf, "JPEG", quality=jpeg_quality)
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def clean_sample(image: bytes | None, caption: bytes | str | None, cfg: DataConfig, reduced: bool = True) -> dict:
    """One raw sample -> {caption, image, width, height} as stored, or `Reject`.

    Order: presence, caption (cheap), image header, decode + convert, resize, encode. `reduced`:
    `decode_resized`'s (False: full decode, for comparisons).
    """
    if not image:
        raise Reject(MISSING_IMAGE)
    text = clean_caption(caption, cfg.max_caption_chars)
    img = decode_resized(open_checked(image, cfg), cfg.resolution, reduced)
    return {"caption": text, "image": encode_image(img, cfg.image_format, cfg.jpeg_quality),
            "width": img.width, "height": img.height}
