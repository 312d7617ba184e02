"""Build one output part from one input file (plain Python: a Ray Data task runs it, tests call it).

Rows keep the input's order, so rebuilding a part yields identical rows. The part and its rejects
file are each written atomically; the returned stats become the part's manifest entry.
"""
from __future__ import annotations

import collections
import json
import time

import pyarrow as pa
import pyarrow.parquet as pq

from vgt.config import DataConfig, from_dict
from vgt.data.clean import DUPLICATE_KEY, UNEXPECTED_ERROR, Reject, clean_sample
from vgt.data.layout import (PART_SCHEMA, REJECT_SCHEMA, ROW_GROUP_ROWS, committed_local_path,
                             part_uri, rejects_uri, write_table_atomic)
from vgt.data.sources import ShardError, iter_samples


def make_key(source: str, shard: str, member: str) -> str:
    """Deterministic row key: source tag + input file + member within the file."""
    return f"{source}/{shard}/{member}"


class _Rejects:
    def __init__(self, source: str, input_uri: str):
        self.source, self.input = source, input_uri
        self.rows: list[dict] = []
        self.by_reason: collections.Counter = collections.Counter()

    def add(self, key: str, reason: str, detail: str = "") -> None:
        self.rows.append({"key": key, "source": self.source, "reason": reason, "detail": detail,
                          "input": self.input})
        self.by_reason[reason] += 1


def build_part(spec: dict, cfg: DataConfig, output: str) -> dict:
    """spec: {name, source, shard, input, format} -> stats for the manifest (part written)."""
    start = time.perf_counter()
    source, shard = spec["source"], spec["shard"]
    rejects = _Rejects(source, spec["input"])
    seen: set[str] = set()
    shard_errors: list[dict] = []
    rows_out = 0
    buffer: list[dict] = []
    with committed_local_path(part_uri(output, spec["name"])) as tmp, \
            pq.ParquetWriter(tmp, PART_SCHEMA) as writer:
        try:
            for raw in iter_samples(spec["input"], spec["format"], cfg):
                key = make_key(source, shard, raw.member)
                row = _clean(raw, key, seen, rejects, cfg)
                if row is None:
                    continue
                buffer.append({"key": key, **row, "source": source})
                if len(buffer) == ROW_GROUP_ROWS:
                    rows_out += _flush(writer, buffer)
        except ShardError as e:  # the rest of this file is lost: one reject row says so
            key = make_key(source, shard, e.member if e.member is not None else "*")
            rejects.add(key, e.reason, e.detail)
            shard_errors.append({"input": spec["input"], "reason": e.reason, "detail": e.detail})
        rows_out += _flush(writer, buffer)
    write_table_atomic(rejects_uri(output, spec["name"]),
                       pa.Table.from_pylist(rejects.rows, schema=REJECT_SCHEMA))
    return {
        "part": spec["name"], "source": source, "input": spec["input"], "format": spec["format"],
        "rows_in": rows_out + len(rejects.rows), "rows_out": rows_out, "rejected": len(rejects.rows),
        "rejected_by_reason": dict(sorted(rejects.by_reason.items())), "shard_errors": shard_errors,
        "seconds": round(time.perf_counter() - start, 3), "complete": True,
    }


def build_part_row(spec: dict, data_cfg: dict, output: str) -> dict:
    """The Ray Data `map` function: a part spec row -> {"stats": JSON}. It lives here, not in
    pipelines.prep.dataset, so Ray workers import only this module's light dependencies (no torch)."""
    # Stats travel as one JSON string: per-part reason dicts differ in keys, which Arrow's
    # struct inference would otherwise have to unify across blocks.
    return {"stats": json.dumps(build_part(spec, from_dict(DataConfig, data_cfg), output))}


def _clean(raw, key: str, seen: set[str], rejects: _Rejects, cfg: DataConfig) -> dict | None:
    if key in seen:
        rejects.add(key, DUPLICATE_KEY, "an earlier row of this input has the same key")
        return None
    seen.add(key)
    if raw.reject is not None:
        rejects.add(key, *raw.reject)
        return None
    try:
        return clean_sample(raw.image, raw.caption, cfg)
    except Reject as r:
        rejects.add(key, r.reason, r.detail)
    except Exception as e:  # one odd row must not cost the whole part: count it under its own reason
        rejects.add(key, UNEXPECTED_ERROR, f"{type(e).__name__}: {e}"[:300])
    return None


def _flush(writer: pq.ParquetWriter, buffer: list[dict]) -> int:
    n = len(buffer)
    if n:
        writer.write_table(pa.Table.from_pylist(buffer, schema=PART_SCHEMA))
        buffer.clear()
    return n
