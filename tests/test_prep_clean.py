"""Ray-free prep pieces: row cleaning, raw readers, input planning, latent columns."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from prep_samples import image_bytes, png_header_only, write_index, write_parquet, write_wds

from vgt.data.plan import default_tag, parse_input, plan_parts
from vgt.config import DataConfig
from vgt.data.clean import Reject, clean_caption, clean_sample, shorter_side_size
from vgt.data.latents import latents_from_columns, latents_to_columns
from vgt.data.sources import ShardError, iter_samples

CFG = DataConfig(resolution=112, image_format="png")  # PNG output: pixel values survive exactly


def _pixels(row: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(row["image"])))


def _encode(img: Image.Image, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def test_alpha_palette_grey_cmyk_and_16bit_become_rgb():
    rgba = Image.new("RGBA", (112, 112), (255, 0, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out = _pixels(clean_sample(_encode(rgba), "x", CFG))
    assert out.shape == (112, 112, 3)
    assert tuple(out[0, 0]) == (255, 255, 255)          # fully transparent -> white
    assert tuple(out[5, 5]) == (255, 127, 127)          # 50% red over white: 255*(1-128/255)+0 = 127

    pal = Image.new("P", (112, 112), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((3, 3), 0)                             # palette index 0 is transparent
    out = _pixels(clean_sample(_encode(pal), "x", CFG))
    assert tuple(out[3, 3]) == (255, 255, 255) and tuple(out[0, 0]) == (0, 255, 0)

    grey = _pixels(clean_sample(_encode(Image.new("L", (112, 112), 77)), "x", CFG))
    assert (grey == 77).all()
    deep = Image.fromarray(np.full((112, 112), 51400, np.uint16))  # 16-bit: 51400/256 = 200.8 -> 200
    assert (_pixels(clean_sample(_encode(deep), "x", CFG)) == 200).all()
    cmyk = Image.new("CMYK", (112, 112), (0, 255, 255, 0))  # pure red in CMYK
    red = _pixels(clean_sample(_encode(cmyk, "JPEG"), "x", CFG))[50, 50].astype(int)
    assert np.abs(red - [255, 0, 0]).max() <= 2          # JPEG rounding only


def test_resize_keeps_aspect_without_crop():
    assert shorter_side_size(300, 150, 112) == (224, 112)
    assert shorter_side_size(112, 300, 112) == (112, 300)
    assert shorter_side_size(90, 100, 112) == (112, 124)    # upscaled: 100*112/90 = 124.4
    row = clean_sample(image_bytes((300, 150)), "x", CFG)
    assert (row["width"], row["height"]) == (224, 112) == Image.open(io.BytesIO(row["image"])).size
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: stored 120x150, shown rotated by 90 degrees -> 150x120
    buf = io.BytesIO()
    Image.open(io.BytesIO(image_bytes((120, 150)))).save(buf, "JPEG", exif=exif)
    row = clean_sample(buf.getvalue(), "x", CFG)
    assert (row["width"], row["height"]) == (140, 112)


def test_caption_cleanup_and_rejections():
    assert clean_caption("  a\tcat \n\n on\x00a  mat ", 100) == "a cat on a mat"
    assert clean_caption("caf\u00e9 \u3000ok".encode(), 100) == "caf\u00e9 ok"
    cases = [(None, "missing_caption"), (" \t\n", "empty_caption"), (b"\xff\xfe ok", "caption_not_utf8"),
             ("lone \udcff surrogate", "caption_not_utf8"), ("x" * 101, "caption_too_long")]
    for raw, reason in cases:
        with pytest.raises(Reject) as err:
            clean_caption(raw, 100)
        assert err.value.reason == reason


def test_image_rejections_header_checked_before_decode():
    good = image_bytes()
    cases = [(good[: len(good) // 2], "corrupt_image"), (b"\x17" * 300, "undecodable_image"),
             (image_bytes((1, 1)), "too_small"), (image_bytes((900, 85)), "bad_aspect"),
             (None, "missing_image"),
             # 144 MP header (between PIL's warning and error limits), garbage pixels: rejected by size
             # without decoding, while the same garbage under a small header fails only at decode.
             (png_header_only(12000, 12000), "too_many_pixels"), (png_header_only(200, 200), "corrupt_image")]
    for data, reason in cases:
        with pytest.raises(Reject) as err:
            clean_sample(data, "caption", CFG)
        assert err.value.reason == reason, (reason, err.value)


def test_readers_for_three_formats(tmp_path):
    img = image_bytes()
    tar = write_wds(str(tmp_path / "w" / "000.tar"), [
        {"__key__": "a", "jpg": img, "txt": "one"}, {"__key__": "b", "png": img, "json": b'{"caption": "two"}'},
        {"__key__": "c", "txt": "no image"}])
    got = [(s.member, s.image == img if s.image else None, s.caption) for s in iter_samples(tar, "wds", CFG)]
    assert got == [("a", True, b"one"), ("b", True, "two"), ("c", None, b"no image")]

    pq_path = write_parquet(str(tmp_path / "p" / "x.parquet"), [img, None], ["one", "two"])
    got = [(s.member, s.image == img if s.image else None, s.caption) for s in iter_samples(pq_path, "parquet", CFG)]
    assert got == [("0", True, "one"), ("1", None, "two")]

    index = write_index(str(tmp_path / "i"), [("a.png", img, "one"), ("gone.png", None, "two")])
    samples = list(iter_samples(index, "index", CFG))
    assert samples[0].image == img and samples[0].caption == "one"
    assert samples[1].reject[0] == "missing_image" and "gone.png" in samples[1].reject[1]

    bad = tmp_path / "junk.tar"
    bad.write_bytes(os.urandom(2000))
    with pytest.raises(ShardError) as err:
        list(iter_samples(str(bad), "wds", CFG))
    assert err.value.reason == "unreadable_shard"


def test_plan_tags_parts_and_inputs(tmp_path):
    for d in ("a", "b"):
        write_wds(str(tmp_path / d / "00000.tar"), [])
    write_wds(str(tmp_path / "a" / "00001.tar"), [])
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path}/a/00001.tar\n")
    assert parse_input("laion=s3://b/x/*.tar") == ("laion", "s3://b/x/*.tar")
    assert parse_input("s3://b/x=1.tar") == (None, "s3://b/x=1.tar")
    assert default_tag(f"{tmp_path}/a/*.tar") == "a" and default_tag("s3://bk/mj/00001.tar") == "00001"
    plan = plan_parts([f"web={tmp_path}/a", f"web={tmp_path}/b/*.tar", f"extra=@{listing}"])
    names = [p["name"] for p in plan]
    assert names[0] == "part-extra-00001" and names[-1] == "part-web-00001"
    dup = [n for n in names if n.startswith("part-web-00000-")]   # same stem in a/ and b/: both kept
    assert len(dup) == 2 and len(set(dup)) == 2 and len(plan) == 4
    with pytest.raises(FileNotFoundError):
        plan_parts([f"{tmp_path}/nothing/*.tar"])


def test_latent_columns_round_trip():
    lat = np.random.default_rng(0).standard_normal((3, 32, 2, 4)).astype(np.float16)
    data, shape = latents_to_columns(lat)
    table = pa.table({"latent": data, "latent_shape": shape})
    back = latents_from_columns(table.slice(1).column("latent"), table.slice(1).column("latent_shape"))
    assert back.dtype == np.float16 and np.array_equal(back, lat[1:])
    with pytest.raises(ValueError, match="overflow"):
        latents_to_columns(np.full((1, 1, 1, 1), 1e6, np.float32))
