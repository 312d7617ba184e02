"""Reduced decoding (JPEG draft mode, PNG box reduction) against the full decode + resize path:
same sizes and EXIF orientation, PSNR within the stated floor, and the same reject reasons."""
from __future__ import annotations

import collections
import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from prep_samples import image_bytes, png_header_only

from pipelines.bench.prep_inputs import photo_like
from vgt.config import DataConfig
from vgt.data.clean import _EXIF_TRANSPOSE, Reject, clean_sample, decode_resized, open_checked, shorter_side_size

CFG = DataConfig(resolution=112, image_format="png")  # PNG output: the pixels compared are the stored ones
MIN_PSNR_DB = 35.0  # the floor the issue sets (measured minima: see the tests below and README)


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def _stored(row: dict) -> Image.Image:
    return Image.open(io.BytesIO(row["image"]))


def test_draft_keeps_size_and_exif_orientation_for_all_eight_tags():
    # An asymmetric photo-like 960x720 JPEG: each of the 8 orientations gives a different picture.
    base = Image.open(io.BytesIO(photo_like(3, side_range=(720, 720))[1])).convert("RGB").resize((960, 720))
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buf = io.BytesIO()
        base.save(buf, "JPEG", quality=92, exif=exif)
        data = buf.getvalue()
        # What the path did before reduced decoding: decode, exif_transpose, then resize.
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        reference = upright.resize(shorter_side_size(*upright.size, 112), Image.Resampling.BICUBIC)
        full = decode_resized(open_checked(data, CFG), 112, reduced=False)
        opened = open_checked(data, CFG)
        reduced = decode_resized(opened, 112)
        assert opened.size == (240, 180)  # libjpeg decoded at 1/4 scale (not 1/8: MAX_DRAFT_SCALE)
        turned = orientation >= 5
        assert reduced.size == full.size == reference.size == ((112, 149) if turned else (149, 112))
        assert psnr(full, reference) > 50, orientation   # the same path, passes in another order
        assert psnr(reduced, reference) >= MIN_PSNR_DB, orientation
        # Every other tag's picture of the same size scores far lower: the test tells orientations apart.
        others = [_upright(base, o) for o in range(1, 9) if o != orientation]
        wrong = [psnr(reduced, o.resize(reduced.size, Image.Resampling.BICUBIC)) for o in others if o.size == upright.size]
        assert len(wrong) == 3 and max(wrong) < 25, (orientation, wrong)
        row = clean_sample(data, "x", CFG)
        assert (row["width"], row["height"]) == reduced.size and np.array_equal(np.asarray(_stored(row)), np.asarray(reduced))


def _upright(stored: Image.Image, orientation: int) -> Image.Image:
    method = _EXIF_TRANSPOSE.get(orientation)
    return stored if method is None else stored.transpose(method)


def test_reduced_decoding_psnr_on_a_realistic_mix():
    # The benchmark's mix scaled by 1/4 with the target (400-2000 px -> 448 becomes 100-500 -> 112):
    # the same source/target ratios, so the same draft scales (1, 2, 4) and PNG reductions.
    scores, scales = [], collections.Counter()
    for i in range(40):
        data = photo_like(i, side_range=(100, 500))[1]
        opened = open_checked(data, CFG)
        stored = opened.size
        reduced = decode_resized(opened, 112)
        scales[round(stored[0] / opened.size[0])] += 1
        full = decode_resized(open_checked(data, CFG), 112, reduced=False)
        assert reduced.size == full.size
        scores.append(psnr(reduced, full))
    assert min(scores) >= MIN_PSNR_DB, sorted(scores)[:3]
    assert scales[2] >= 10 and scales[4] >= 1, scales  # both reductions (1/4 needs a source >= 4x the target)


def _reject_inputs() -> dict[str, bytes | None]:
    big = photo_like(5, side_range=(800, 800))[1]  # a JPEG that draft reduces 4x at 112 px
    progressive = io.BytesIO()
    Image.open(io.BytesIO(big)).save(progressive, "JPEG", progressive=True, quality=90)
    progressive = progressive.getvalue()
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(io.BytesIO(big)).save(turned, "JPEG", exif=exif)
    bad_exif = turned.getvalue().replace(b"Exif\x00\x00MM", b"Exif\x00\x00XX", 1).replace(b"Exif\x00\x00II", b"Exif\x00\x00XX", 1)
    cmyk = io.BytesIO()
    Image.open(io.BytesIO(big)).convert("CMYK").save(cmyk, "JPEG")
    return {
        "good_big": big, "progressive": progressive, "cmyk_big": cmyk.getvalue(), "bad_exif": bad_exif,
        "grey_big": image_bytes((900, 700), mode="L"), "rgba_png": image_bytes((700, 500), mode="RGBA", fmt="PNG"),
        "cut_30": big[: len(big) * 3 // 10], "cut_90": big[: len(big) * 9 // 10],
        "cut_progressive": progressive[: len(progressive) // 2], "cut_small": image_bytes()[:1000],
        "random": b"\x17" * 300, "one_px": image_bytes((1, 1)), "aspect": image_bytes((900, 85)),
        "no_image": None, "huge_header": png_header_only(12000, 12000), "garbage_png": png_header_only(900, 900),
    }


def _outcomes(reduced: bool) -> dict[str, str]:
    out = {}
    for name, data in _reject_inputs().items():
        try:
            row = clean_sample(data, "caption", CFG, reduced=reduced)
            out[name] = "kept" if name != "bad_exif" else f"kept {row['width']}x{row['height']}"
        except Reject as r:
            out[name] = r.reason
    return out


def test_reject_reasons_are_the_same_with_reduced_decoding():
    full, reduced = _outcomes(reduced=False), _outcomes(reduced=True)
    assert reduced == full
    assert full["bad_exif"] == "kept 224x112"  # damaged EXIF: 1600x800 as stored (tag 6 would give 112x224)
    assert collections.Counter(full.values()) == {
        "kept": 5, "kept 224x112": 1, "corrupt_image": 5, "undecodable_image": 1, "too_small": 1, "bad_aspect": 1,
        "missing_image": 1, "too_many_pixels": 1}, full


@pytest.mark.parametrize("mode", ["RGB", "P", "LA"])
def test_png_box_reduction_stays_close_to_the_full_resize(mode):
    data = image_bytes((600, 450), mode=mode, fmt="PNG", seed=1)  # 4x the target: a 2x box step first
    reduced = decode_resized(open_checked(data, CFG), 112)
    full = decode_resized(open_checked(data, CFG), 112, reduced=False)
    assert reduced.size == full.size == (149, 112)
    assert psnr(reduced, full) >= MIN_PSNR_DB
