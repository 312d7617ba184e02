"""`vgt prep` on a real local Ray cluster: three source formats, S3, bad rows, resume."""
from __future__ import annotations

import io
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image
from prep_samples import (good_wds_samples, image_bytes, png_header_only, write_index, write_parquet,
                          write_wds)

from pipelines.prep.dataset import run_prep
from vgt import io as vio
from vgt.artifacts import ArtifactError
from vgt.data import PreparedDataset
from vgt.data.layout import rejects_uri
from vgt.presets import get_preset


@pytest.fixture
def cfg():
    return get_preset("tiny")  # 112 px, min side 80


def _rows(ds: PreparedDataset) -> dict[str, dict]:
    return {r["key"]: r for b in ds.iter_batches() for r in b.to_pylist()}


def _three_formats(root) -> list[str]:
    web = [write_wds(f"{root}/web/{i:05d}.tar", good_wds_samples(3, seed=10 * i)) for i in range(2)]
    img = image_bytes((150, 100))
    write_parquet(f"{root}/tab/t.parquet", [img, None, image_bytes(seed=3)], ["  a  table ", "lost", "b"])
    write_index(f"{root}/idx", [("x.png", image_bytes(fmt="PNG"), "indexed"), ("gone.jpg", None, "no file")])
    return [f"web={root}/web", f"tab={root}/tab/*.parquet", f"idx={root}/idx/index.jsonl"], web


def test_three_formats_two_sources_tags_counts_and_resume(ray_cluster, tmp_path, cfg, capsys):
    inputs, web = _three_formats(tmp_path / "raw")
    out = str(tmp_path / "out")
    m = run_prep(inputs, out, cfg)
    assert m["sources"] == {
        "idx": {"inputs": 1, "rows_in": 2, "rows_out": 1, "rejected": 1, "rejected_by_reason": {"missing_image": 1}},
        "tab": {"inputs": 1, "rows_in": 3, "rows_out": 2, "rejected": 1, "rejected_by_reason": {"missing_image": 1}},
        "web": {"inputs": 2, "rows_in": 6, "rows_out": 6, "rejected": 0, "rejected_by_reason": {}}}
    assert m["counts"] == {"rows_in": 11, "rows_out": 9, "rejected": 2, "rejected_by_reason": {"missing_image": 2}}
    ds = PreparedDataset(out)
    assert [p.name for p in ds.parts] == ["part-idx-index", "part-tab-t", "part-web-00000", "part-web-00001"]
    assert ds.sources == {"idx": 1, "tab": 2, "web": 6}
    rows = _rows(ds)
    assert rows["tab/t/0"]["caption"] == "a table" and rows["idx/index/0"]["caption"] == "indexed"
    assert sorted(k for k in rows if k.startswith("web/")) == [f"web/{s:05d}/{i:04d}" for s in range(2) for i in range(3)]
    for r in rows.values():
        assert r["source"] == r["key"].split("/")[0]
        img = Image.open(io.BytesIO(r["image"]))
        assert img.mode == "RGB" and img.format == "JPEG" and img.size == (r["width"], r["height"])
        assert min(img.size) == 112
    assert (rows["tab/t/0"]["width"], rows["tab/t/0"]["height"]) == (168, 112)  # 150x100 -> shorter side 112
    assert "TOTAL" in capsys.readouterr().out

    # Delete one part: the rerun rebuilds exactly that one, with identical rows, and leaves the rest.
    before = {p.name: pq.read_table(p.uri) for p in ds.parts}
    mtimes = {p.name: os.stat(p.uri).st_mtime_ns for p in ds.parts}
    os.remove(ds.parts[2].uri)
    m2 = run_prep(inputs, out, cfg)
    assert m2["runs"][-1]["parts_built"] == ["part-web-00000"] and m2["runs"][-1]["parts_skipped"] == 3
    assert m2["counts"] == m["counts"]
    for p in PreparedDataset(out).parts:
        assert pq.read_table(p.uri).equals(before[p.name])
        assert (os.stat(p.uri).st_mtime_ns == mtimes[p.name]) == (p.name != "part-web-00000")

    # Another data config over the same output is refused; --overwrite (through the CLI) rebuilds all.
    with pytest.raises(ArtifactError, match="data config"):
        run_prep(inputs, out, get_preset("tiny", ["data.min_side=90"]))
    from ray_jobs.cli import main

    assert main(["prep", "--input", *inputs, "--out", out, "--preset", "tiny", "--overwrite"]) == 0
    m3 = vio.read_json(f"{out}/manifest.json")
    assert len(m3["runs"]) == 1 and len(m3["runs"][0]["parts_built"]) == 4 and m3["counts"] == m["counts"]


def test_bad_rows_are_counted_by_reason_and_good_rows_kept(ray_cluster, tmp_path, cfg):
    good = image_bytes()
    img = {"rgb": ("jpg", good), "grey": ("png", image_bytes(mode="L", fmt="PNG")),
           "cmyk": ("jpg", image_bytes(mode="CMYK")), "rgba": ("png", image_bytes(mode="RGBA", fmt="PNG")),
           "palette": ("png", image_bytes(mode="P", fmt="PNG")),
           "truncated": ("jpg", good[: len(good) // 2]), "random": ("jpg", os.urandom(3000)),
           "one_px": ("png", image_bytes((1, 1), fmt="PNG")), "huge_header": ("png", png_header_only(12000, 12000))}
    samples = [{"__key__": k, ext: data, "txt": f"{k} caption"} for k, (ext, data) in img.items()]
    samples += [{"__key__": "empty_cap", "jpg": good, "txt": " \n\t "},
                {"__key__": "not_utf8", "jpg": good, "txt": b"caf\xe9 \xff"},
                {"__key__": "no_image", "txt": "a caption alone"}]
    write_wds(str(tmp_path / "mix" / "a.tar"), samples)
    whole = write_wds(str(tmp_path / "cut" / "b.tar"), good_wds_samples(3))
    with tarfile.open(whole) as tar:  # cut in the middle of the third sample's image member
        member = tar.getmember("0002.jpg")
        cut = member.offset_data + member.size // 2
    (tmp_path / "mix" / "b.tar").write_bytes(open(whole, "rb").read()[:cut])
    (tmp_path / "mix" / "c.tar").write_bytes(os.urandom(1500))   # not a tar at all

    m = run_prep([str(tmp_path / "mix")], str(tmp_path / "out"), cfg)
    expected = {"corrupt_image": 1, "undecodable_image": 1, "too_small": 1, "too_many_pixels": 1,
                "empty_caption": 1, "caption_not_utf8": 1, "missing_image": 1, "truncated_shard": 1,
                "unreadable_shard": 1}
    assert m["counts"] == {"rows_in": 7 + 9, "rows_out": 7, "rejected": 9, "rejected_by_reason": expected}
    assert {e["part"]: e["reason"] for e in m["shard_errors"]} == {"part-mix-b": "truncated_shard",
                                                                 "part-mix-c": "unreadable_shard"}
    kept = _rows(PreparedDataset(str(tmp_path / "out")))
    assert sorted(kept) == sorted([f"mix/a/{k}" for k in ("rgb", "grey", "cmyk", "rgba", "palette")]
                                  + ["mix/b/0000", "mix/b/0001"])
    assert all(Image.open(io.BytesIO(r["image"])).mode == "RGB" for r in kept.values())
    rejects = {r["key"]: r["reason"] for n in "abc"
               for r in pq.read_table(rejects_uri(str(tmp_path / "out"), f"part-mix-{n}")).to_pylist()}
    assert rejects == {"mix/a/truncated": "corrupt_image", "mix/a/random": "undecodable_image",
                       "mix/a/one_px": "too_small", "mix/a/huge_header": "too_many_pixels",
                       "mix/a/empty_cap": "empty_caption", "mix/a/not_utf8": "caption_not_utf8",
                       "mix/a/no_image": "missing_image", "mix/b/0002": "truncated_shard",
                       "mix/c/*": "unreadable_shard"}


def test_s3_in_and_out(ray_cluster, s3_bucket, tmp_path, cfg):
    local = _three_formats(tmp_path / "raw")[1][0]
    fs, _ = vio.fsspec_fs(f"s3://{s3_bucket}")
    fs.put_file(local, f"{s3_bucket}/raw/web/00000.tar")
    index = write_index(str(tmp_path / "idx"), [("x.png", image_bytes(fmt="PNG"), "on s3")])
    fs.put(str(tmp_path / "idx") + "/", f"{s3_bucket}/raw/idx/", recursive=True)
    out = f"s3://{s3_bucket}/prepared"
    m = run_prep([f"s3://{s3_bucket}/raw/web/*.tar", f"s3://{s3_bucket}/raw/idx/{os.path.basename(index)}"], out, cfg,
                 concurrency=1)
    assert m["sources"]["web"]["rows_out"] == 3 and m["sources"]["index"]["rows_out"] == 1
    ds = PreparedDataset(out)  # manifest, parts and rejects all on S3
    assert ds.manifest["counts"]["rows_out"] == 4 and ds.num_rows == 4
    assert {r["caption"] for r in _rows(ds).values()} == {"picture 0", "picture 1", "picture 2", "on s3"}
    assert vio.exists(rejects_uri(out, "part-web-00000"))
