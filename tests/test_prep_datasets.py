"""Hugging Face `datasets` as prep inputs: parquet shards written by `datasets`' own `to_parquet`
(the `Image` feature's {bytes, path} struct, bytes inline or a path only), local and on S3, a
folder of shards as one part per shard with the usual rejects accounting and part-level resume;
and a `datasets.Dataset` object split into a stated number of parts."""
from __future__ import annotations

import os

import pytest
from prep_samples import image_bytes

from pipelines.prep.dataset import run_prep, run_prep_dataset
from vgt import io as vio
from vgt.data import PreparedDataset
from vgt.presets import get_preset

CAPTIONS = ["a red square", "a blue circle", None, "two green dots", "a grey sky", "a tiny picture"]


def hf_dataset(tmp_path):
    """Six rows made by `datasets`: bytes inline, one caption missing, one undecodable image, one too
    small, and one image stored by path only (a local file, as `Image()` casts file names)."""
    import datasets

    on_disk = tmp_path / "files" / "on-disk.png"
    on_disk.parent.mkdir(parents=True)
    on_disk.write_bytes(image_bytes((130, 120), fmt="PNG", seed=9))
    images = [{"bytes": image_bytes(seed=i), "path": None} for i in range(3)]
    images += [{"bytes": b"not an image", "path": None}, {"bytes": None, "path": str(on_disk)},
               {"bytes": image_bytes((40, 40), seed=5), "path": None}]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict({"image": images, "caption": CAPTIONS}, features=features)


def write_shards(ds, folder: str, n: int) -> list[str]:
    uris = []
    for i in range(n):
        uri = vio.join(folder, f"train-{i:05d}-of-{n:05d}.parquet")
        with vio.open(uri, "wb") as f:
            ds.shard(num_shards=n, index=i, contiguous=True).to_parquet(f)
        uris.append(uri)
    return uris


EXPECTED = {"rows_in": 6, "rows_out": 3, "rejected": 3,
            "rejected_by_reason": {"missing_caption": 1, "undecodable_image": 1, "too_small": 1}}


def test_parquet_shards_from_datasets_are_parts_with_rejects_and_resume(tmp_path):
    import pyarrow.parquet as pq

    ds = hf_dataset(tmp_path)
    shards = write_shards(ds, str(tmp_path / "shards"), 3)
    assert pq.read_schema(shards[0]).field("image").type.names == ["bytes", "path"]  # the Image struct
    out = str(tmp_path / "prepared")
    m = run_prep([f"hub={tmp_path / 'shards'}"], out, get_preset("tiny"), in_process=True)
    assert sorted(m["parts"]) == [f"part-hub-train-{i:05d}-of-00003" for i in range(3)]
    assert m["counts"] == EXPECTED
    rows = {r["key"]: r for b in PreparedDataset(out).iter_batches() for r in b.to_pylist()}
    assert sorted(r["caption"] for r in rows.values()) == ["a blue circle", "a grey sky", "a red square"]
    # resume: only the part whose file is gone is rebuilt
    part = PreparedDataset(out).parts[1]
    os.remove(part.uri)
    again = run_prep([f"hub={tmp_path / 'shards'}"], out, get_preset("tiny"), in_process=True)
    assert again["runs"][-1]["parts_built"] == [part.name] and again["runs"][-1]["parts_skipped"] == 2
    assert again["counts"] == EXPECTED


def test_parquet_shards_on_s3(tmp_path, s3_bucket):
    ds = hf_dataset(tmp_path).select([0, 1, 2, 3])  # inline bytes only (a local path means nothing on S3)
    write_shards(ds, f"s3://{s3_bucket}/shards", 2)
    m = run_prep([f"s3://{s3_bucket}/shards"], f"s3://{s3_bucket}/prepared", get_preset("tiny"), in_process=True)
    assert len(m["parts"]) == 2
    assert m["counts"] == {"rows_in": 4, "rows_out": 2, "rejected": 2,
                           "rejected_by_reason": {"missing_caption": 1, "undecodable_image": 1}}


def test_a_dataset_object_is_split_into_the_stated_parts(tmp_path):
    ds = hf_dataset(tmp_path)
    out = str(tmp_path / "prepared")
    m = run_prep_dataset(ds, out, get_preset("tiny"), num_parts=3, in_process=True)
    assert len(m["parts"]) == 3 and m["counts"] == EXPECTED
    assert [p["rows_in"] for _, p in sorted(m["parts"].items())] == [2, 2, 2]  # contiguous row ranges
    shards = vio.glob(f"{out}/source/{ds._fingerprint}/*.parquet")
    mtimes = [os.stat(s).st_mtime_ns for s in shards]
    again = run_prep_dataset(ds, out, get_preset("tiny"), num_parts=3, in_process=True)
    assert again["runs"][-1]["parts_built"] == [] and again["runs"][-1]["parts_skipped"] == 3  # resumed, nothing redone
    assert [os.stat(s).st_mtime_ns for s in shards] == mtimes
    with pytest.raises(Exception, match="num_parts must be between 1 and the dataset's 6 rows, got 7"):
        run_prep_dataset(ds, out, get_preset("tiny"), num_parts=7)
