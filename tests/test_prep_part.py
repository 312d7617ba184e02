"""A part interrupted mid-write leaves no partial file (temp file + rename), and a rerun builds it whole."""
from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
from prep_samples import good_wds_samples, write_wds

import vgt.data.part as part
from vgt.config import DataConfig
from vgt.data import layout
from vgt.data.plan import plan_parts

CFG = DataConfig(resolution=112)


def test_a_part_interrupted_mid_write_leaves_no_file_and_no_litter(tmp_path, monkeypatch):
    write_wds(str(tmp_path / "raw" / "a.tar"), good_wds_samples(7))
    (spec,) = plan_parts([str(tmp_path / "raw")])
    out = str(tmp_path / "out")
    real_flush, seen = part._flush, []

    def flush_then_fail(writer, buffer):  # row group 1 reaches the temp file, then the task dies
        n = real_flush(writer, buffer)
        temps = [f for f in os.listdir(out) if f.startswith(".part-")]
        seen.append((n, temps, sum(os.path.getsize(os.path.join(out, f)) for f in temps)))
        if len(seen) == 2:
            raise RuntimeError("worker lost")
        return n

    monkeypatch.setattr(part, "ROW_GROUP_ROWS", 2)
    monkeypatch.setattr(part, "_flush", flush_then_fail)
    with pytest.raises(RuntimeError, match="worker lost"):
        part.build_part(spec, CFG, out)
    (n1, temps1, bytes1), (n2, temps2, _) = seen
    assert n1 == n2 == 2 and len(temps1) == 1 and temps2 == temps1 and bytes1 > 0  # rows were half written
    assert os.listdir(out) == []  # no part, no temp file, no rejects
    assert layout.part_files(out) == set()

    monkeypatch.setattr(part, "_flush", real_flush)
    stats = part.build_part(spec, CFG, out)
    assert stats["rows_out"] == 7 and stats["complete"]
    table = pq.read_table(layout.part_uri(out, spec["name"]))
    assert table.column("key").to_pylist() == [f"raw/a/{i:04d}" for i in range(7)]
    assert sorted(os.listdir(out)) == sorted([layout.REJECTS_DIR, layout.part_file(spec["name"])])
