import json
import subprocess
import sys

import pytest
import torch

from vgt import io as vio
from vgt.artifacts import ArtifactError, fingerprint, load_component, save_component
from pipelines.bench import format_table
from vgt.provenance import collect_provenance


def _state():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.arange(5, dtype=torch.bfloat16),
            "scalar": torch.tensor(2.5)}


@pytest.mark.parametrize("where", ["local", "s3"])
def test_component_round_trip_is_bit_identical(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else f"s3://{request.getfixturevalue('s3_bucket')}"
    folder = vio.join(root, "ae")
    fp = save_component(folder, "ae", {"latent_channels": 32}, _state())
    config, state, fp2 = load_component(folder, "ae")
    assert config == {"latent_channels": 32} and fp == fp2 == fingerprint(_state())
    for k, v in _state().items():
        assert state[k].dtype == v.dtype and torch.equal(state[k], v)
    assert vio.ls(root) == [folder]


def test_fingerprint_changes_with_any_byte_and_ignores_order():
    a = _state()
    assert fingerprint(a) == fingerprint(dict(reversed(list(a.items()))))
    b = dict(a, w=a["w"].clone())
    b["w"][1, 2] += 1e-6
    assert fingerprint(a) != fingerprint(b)


def test_other_format_version_and_wrong_kind_fail_clearly(tmp_path):
    save_component(str(tmp_path), "ae", {}, _state())
    with pytest.raises(ArtifactError, match="holds a 'ae' component, not 'ar'"):
        load_component(str(tmp_path), "ar")
    meta = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99; this vgt reads version 1"):
        load_component(str(tmp_path), "ae")
    with pytest.raises(ArtifactError, match="config.json is missing"):
        load_component(str(tmp_path / "nope"), "ae")


def test_corrupted_tensor_fails_with_fingerprint_message(tmp_path):
    save_component(str(tmp_path), "ae", {}, _state())
    raw = bytearray((tmp_path / "model.safetensors").read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the last tensor's data
    (tmp_path / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="is corrupted: content fingerprint"):
        load_component(str(tmp_path), "ae")
    (tmp_path / "model.safetensors").write_bytes(bytes(raw[:20]))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        load_component(str(tmp_path), "ae")


def test_atomic_write_glob_and_rm_local(tmp_path):
    vio.atomic_write_bytes(str(tmp_path / "a" / "x.bin"), b"123")
    vio.write_json(str(tmp_path / "a" / "y.json"), {"k": 1})
    assert vio.glob(str(tmp_path / "a" / "*")) == [str(tmp_path / "a" / "x.bin"), str(tmp_path / "a" / "y.json")]
    assert vio.read_json(str(tmp_path / "a" / "y.json")) == {"k": 1}
    assert not list((tmp_path / "a").glob("*.tmp-*"))
    vio.rm(str(tmp_path / "a"), recursive=True)
    assert not vio.exists(str(tmp_path / "a"))


def test_s3_glob_and_pyarrow_filesystem_see_the_same_objects(s3_bucket):
    import pyarrow.parquet as pq
    import pyarrow as pa

    vio.write_bytes(f"s3://{s3_bucket}/d/part-1.bin", b"a")
    vio.write_bytes(f"s3://{s3_bucket}/d/part-0.bin", b"b")
    assert vio.glob(f"s3://{s3_bucket}/d/part-*.bin") == [f"s3://{s3_bucket}/d/part-0.bin",
                                                          f"s3://{s3_bucket}/d/part-1.bin"]
    fs, path = vio.pyarrow_fs(f"s3://{s3_bucket}/t.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), path, filesystem=fs)
    with vio.open(f"s3://{s3_bucket}/t.parquet") as f:
        assert pq.read_table(f).column("x").to_pylist() == [1, 2]


def test_provenance_records_versions_and_seeds():
    p = collect_provenance({"a": 1}, seeds={"train": 3})
    assert p["packages"]["torch"].startswith("2.") and p["seeds"] == {"train": 3}
    assert p["config"] == {"a": 1} and json.dumps(p)


def test_bench_table_aligns_union_of_columns():
    text = format_table([{"case": "a", "ratio": 2.0}, {"case": "bb", "extra": 1}])
    assert text.splitlines() == ["case  ratio  extra", "----  -----  -----", "a     2", "bb           1"]


def test_cli_help_is_fast_and_lists_every_command():
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ray_jobs.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for name in ("info", "convert", "prep", "prep-latents", "train-ae", "train-ar", "serve", "demo", "bench"):
        assert f"  {name} " in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines()}
    assert not imported & {"torch", "ray", "transformers"}
