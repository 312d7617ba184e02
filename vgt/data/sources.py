"""Raw input readers for `vgt prep` (no Ray): one input file -> a stream of raw samples.

Formats:
- `wds`: WebDataset tar shards as img2dataset writes them (`KEY.jpg|jpeg|png|webp`, `KEY.txt`,
  optional `KEY.json` whose "caption" is used when there is no `.txt`); read as a stream, so
  an `s3://` shard is never downloaded whole or seeked.
- `parquet`: an image-bytes column (bytes, or the `{bytes, path}` struct of a Hugging Face
  `datasets` `Image` feature, as `to_parquet` and the Hub's parquet shards store it; a struct with
  no bytes is read from its path, relative to the parquet file's folder) and a caption column;
  names from `DataConfig.image_column/caption_column`. A folder of shards is one part per shard.
- `index`: a JSON list or JSONL file of objects `{image_column: path, caption_column: text}`;
  relative paths are resolved against the index file's folder (the reference's format).

A sample's `member` is unique within its file (tar sample key, parquet row number, index entry
number). A problem with one sample is reported on that sample; a file that cannot be read, or
ends mid-record, raises `ShardError` after yielding every sample before the damage.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

from vgt import io as vio
from vgt.config import DataConfig

from .clean import BAD_RECORD, MISSING_IMAGE, TRUNCATED_SHARD, UNREADABLE_SHARD

FORMAT_SUFFIXES = {
    "wds": (".tar", ".tar.gz", ".tgz"),
    "parquet": (".parquet",),
    "index": (".jsonl", ".json"),
}
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
BATCH_ROWS = 256  # parquet rows decoded per read


@dataclass
class RawSample:
    member: str
    image: bytes | None = None
    caption: bytes | str | None = None
    reject: tuple[str, str] | None = None  # (reason, detail) already known while reading


class ShardError(Exception):
    """An input file is unreadable (`unreadable_shard`) or ends mid-record (`truncated_shard`)."""

    def __init__(self, reason: str, detail: str, member: str | None = None):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.member = reason, detail[:300], member


def detect_format(uri: str) -> str:
    """`wds` | `parquet` | `index` from the file name; ValueError for anything else."""
    name = uri.lower()
    for fmt, suffixes in FORMAT_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    known = ", ".join(s for suffixes in FORMAT_SUFFIXES.values() for s in suffixes)
    raise ValueError(f"{uri!r}: unknown input format (expected a file ending in {known})")


def shard_stem(uri: str) -> str:
    """The file name without its format suffix: `.../00012.tar` -> `00012`."""
    name = posixpath.basename(str(uri).rstrip("/"))
    for suffixes in FORMAT_SUFFIXES.values():
        for suffix in suffixes:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
    return name


def iter_samples(uri: str, fmt: str, cfg: DataConfig) -> Iterator[RawSample]:
    readers = {"wds": _iter_wds, "parquet": _iter_parquet, "index": _iter_index}
    return readers[fmt](uri, cfg)


# -- WebDataset tar --------------------------------------------------------------------------------
_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: key up to the first dot


def _iter_wds(uri: str, cfg: DataConfig) -> Iterator[RawSample]:
    key: str | None = None
    parts: dict[str, bytes] = {}
    seen_member = False
    try:
        with vio.open(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for info in tar:
                seen_member = True
                match = _MEMBER.match(info.name)
                if not info.isfile() or not match:
                    continue
                member, ext = match.group(1), match.group(2).lower()
                if member != key:
                    if key is not None:
                        yield _wds_sample(key, parts)
                    key, parts = member, {}
                parts[ext] = tar.extractfile(info).read()
    except Exception as e:  # tarfile/gzip/zlib/S3 errors all mean the same: the rest is unreadable
        if not seen_member:
            raise ShardError(UNREADABLE_SHARD, f"{type(e).__name__}: {e}") from None
        raise ShardError(TRUNCATED_SHARD, f"{type(e).__name__}: {e}", member=key) from None
    if key is not None:
        yield _wds_sample(key, parts)


def _wds_sample(key: str, parts: dict[str, bytes]) -> RawSample:
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    caption: bytes | str | None = parts.get("txt")
    if caption is None and "json" in parts:
        try:
            caption = json.loads(parts["json"]).get("caption")
        except (ValueError, AttributeError):  # not JSON, or not an object: no caption there
            caption = None
    return RawSample(member=key, image=image, caption=caption)


# -- parquet ---------------------------------------------------------------------------------------
def _iter_parquet(uri: str, cfg: DataConfig) -> Iterator[RawSample]:
    from .layout import open_parquet

    columns = [cfg.image_column, cfg.caption_column]
    try:
        pf = open_parquet(uri)
        names = pf.schema_arrow.names
    except Exception as e:  # not parquet, unreadable footer, missing file
        raise ShardError(UNREADABLE_SHARD, f"{type(e).__name__}: {e}") from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise ShardError(UNREADABLE_SHARD, f"no column(s) {missing}; the file has {names} "
                                           "(set data.image_column / data.caption_column)")
    row = 0
    folder = posixpath.dirname(uri) if vio.is_s3(uri) else _local_dirname(uri)
    try:
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
            images = batch.column(cfg.image_column).to_pylist()
            captions = batch.column(cfg.caption_column).to_pylist()
            for image, caption in zip(images, captions):
                yield _parquet_sample(str(row), image, caption, folder)
                row += 1
    except Exception as e:  # a damaged row group: rows from here on are lost
        raise ShardError(TRUNCATED_SHARD, f"{type(e).__name__}: {e}", member=str(row)) from None


def _parquet_sample(member: str, image: Any, caption: Any, folder: str) -> RawSample:
    if isinstance(image, dict):  # Hugging Face `Image` feature: {"bytes": ..., "path": ...}
        path = image.get("path")
        image = image.get("bytes")
        if image is None and path:  # stored by reference (a local dataset's files)
            return _sample_from_path(member, path, folder, caption)
    return RawSample(member, image=image if isinstance(image, (bytes, bytearray)) else None, caption=caption)


def _sample_from_path(member: str, path: str, folder: str, caption: Any) -> RawSample:
    """A sample whose image is the file at `path` (absolute, s3://, or relative to `folder`)."""
    full = path if vio.is_s3(path) or path.startswith("/") else vio.join(folder, path)
    try:
        image = vio.read_bytes(full)
    except (OSError, UnicodeError, ValueError) as e:  # missing file, unencodable path
        return RawSample(member, reject=(MISSING_IMAGE, f"{full}: {type(e).__name__}: {e}"))
    return RawSample(member, image=image, caption=caption)


# -- JSON / JSONL index next to an image folder ---------------------------------------------------
def _iter_index(uri: str, cfg: DataConfig) -> Iterator[RawSample]:
    try:
        entries = _index_entries(uri)
    except Exception as e:
        raise ShardError(UNREADABLE_SHARD, f"{type(e).__name__}: {e}") from None
    folder = posixpath.dirname(uri) if vio.is_s3(uri) else _local_dirname(uri)
    for n, entry in enumerate(entries):
        yield _index_sample(str(n), entry, folder, cfg)


def _local_dirname(uri: str) -> str:
    return os.path.dirname(os.path.abspath(uri))


def _index_entries(uri: str) -> list[Any]:
    text = vio.read_bytes(uri).decode("utf-8", errors="surrogateescape")  # bad bytes reach the caption check
    if uri.lower().endswith(".jsonl"):
        return [_json_or_error(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError(f"a .json index must hold a list of objects, got {type(data).__name__}")
    return data


def _json_or_error(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError as e:
        return e


def _index_sample(member: str, entry: Any, folder: str, cfg: DataConfig) -> RawSample:
    if not isinstance(entry, dict):
        return RawSample(member, reject=(BAD_RECORD, f"index entry is not a JSON object: {entry}"))
    path = entry.get(cfg.image_column)
    if not isinstance(path, str) or not path:
        return RawSample(member, reject=(MISSING_IMAGE, f"no {cfg.image_column!r} path in the entry"))
    return _sample_from_path(member, path, folder, entry.get(cfg.caption_column))
