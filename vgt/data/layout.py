"""The prepared-dataset folder: file names, parquet schemas, manifest I/O, atomic parquet writes.

```
DATASET/
  manifest.json                  counts (in/out/by reason), per source, per part, config, provenance
  part-<source>-<shard>.parquet  one per input file: key, caption, image, width, height, source
                                 (+ latent, latent_shape after `vgt prep-latents`)
  rejects/part-<source>-<shard>.parquet   key, source, reason, detail, input
```
Plain pyarrow types only, so any parquet reader can use the parts without Ray or vgt.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vgt import io as vio

FORMAT_VERSION = 1
KIND = "prepared_dataset"
MANIFEST = "manifest.json"
REJECTS_DIR = "rejects"
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"

PART_SCHEMA = pa.schema([
    ("key", pa.string()),       # "<source>/<shard>/<member>": unique and stable across reruns
    ("caption", pa.string()),   # cleaned UTF-8
    ("image", pa.binary()),     # JPEG or PNG bytes, shorter side = resolution, not cropped
    ("width", pa.int32()),      # of the stored image
    ("height", pa.int32()),
    ("source", pa.string()),    # the source tag given to `vgt prep`
])
LATENT_FIELDS = [
    pa.field("latent", pa.binary()),                    # float16, little-endian, C order
    pa.field("latent_shape", pa.list_(pa.int32())),     # [channels, h, w]
]
REJECT_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),
    ("reason", pa.string()),   # one of vgt.data.clean.REASONS
    ("detail", pa.string()),   # the error text, for humans
    ("input", pa.string()),    # the input file the row came from
])
# Rows per parquet row group: readers (and prep-latents) stream one group at a time.
ROW_GROUP_ROWS = 128


def part_file(name: str) -> str:
    return f"{name}{PART_SUFFIX}"


def part_uri(dataset: str, name: str) -> str:
    return vio.join(dataset, part_file(name))


def rejects_uri(dataset: str, name: str) -> str:
    return vio.join(dataset, REJECTS_DIR, part_file(name))


def manifest_uri(dataset: str) -> str:
    return vio.join(dataset, MANIFEST)


def part_files(folder: str) -> set[str]:
    """Names of the part files directly in `folder` (empty when it does not exist)."""
    names = (uri.rstrip("/").rsplit("/", 1)[-1] for uri in vio.ls(folder))
    return {n for n in names if n.startswith(PART_PREFIX) and n.endswith(PART_SUFFIX)}


def manifest_problem(manifest: dict) -> str | None:
    """Why `manifest` is not one this vgt reads (None when it is)."""
    if manifest.get("kind") != KIND:
        return "is not a vgt prepared-dataset manifest"
    if manifest.get("format_version") != FORMAT_VERSION:
        return (f"has format version {manifest.get('format_version')!r}; this vgt reads version "
                f"{FORMAT_VERSION}. Rerun `vgt prep --overwrite`.")
    return None


def write_manifest(dataset: str, manifest: dict) -> None:
    vio.write_json(manifest_uri(dataset), manifest)


@contextlib.contextmanager
def committed_local_path(uri: str) -> Iterator[str]:
    """A local path to write; on success it becomes `uri` in one step, on error it is discarded.

    Local: a hidden temp file in the target folder, then `os.replace`. S3: a local temp file, then
    one upload (the object appears only when the upload completes).
    """
    if vio.is_s3(uri):
        tmpdir = tempfile.mkdtemp(prefix="vgt-part-")
        tmp = os.path.join(tmpdir, "part")
        try:
            yield tmp
            fs, path = vio.fsspec_fs(uri)
            fs.put_file(tmp, path)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return
    folder, name = os.path.split(os.path.abspath(uri))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, uri)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_table_atomic(uri: str, table: pa.Table) -> None:
    with committed_local_path(uri) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)


def open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = vio.pyarrow_fs(uri)
    return pq.ParquetFile(fs.open_input_file(path))
