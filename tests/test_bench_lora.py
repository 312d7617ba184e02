"""`vgt bench lora --quick`: the LoRA-vs-full-tuning comparison on the shapes task (pipelines/bench/lora.py) runs its
three engine runs on the tiny preset: a base without the colour word, then LoRA and full tuning from it on data
naming the word. The figures of the real comparison are in the README; this checks the machinery."""
from __future__ import annotations

import json

import pytest

from pipelines.bench import lora


@pytest.mark.timeout(300)  # ~12 s on one idle core; minutes on a crowded one
def test_quick_comparison_trains_only_adapters_head_queries_projections_and_teaches_the_word(tmp_path, capsys):
    from ray_jobs.cli import main
    from vgt.footprint import count_parameters
    from vgt.presets import get_preset

    assert main(["bench", "lora", "--quick", "--out", str(tmp_path / "rows.json")]) == 0
    rows = {r["model"]: r for r in json.loads((tmp_path / "rows.json").read_text())}
    (setting,) = lora.QUICK.lora
    base, full, adapted = rows["base"], rows["full"], rows[setting.label]
    assert setting.label in capsys.readouterr().out  # the table

    counts = count_parameters(get_preset("tiny", {"train.ar_pretrain.lora.rank": setting.rank}))
    assert base["trainable"] == full["trainable"] == counts["ar"]
    # LoRA: the LLM's adapters (what `vgt info` counts) + everything outside the LLM (head, queries, projections)
    assert adapted["trainable"] == counts["ar"] - counts["ar.llm"] + counts["ar.lora"] < counts["ar"]
    assert adapted["llm_changed"] == 0 < full["llm_changed"]  # the LLM's own weights: frozen vs tuned
    assert base["steps"] == lora.QUICK.base_steps and full["steps"] == adapted["steps"] == lora.QUICK.tune_steps
    # the word neither base run saw: both tunings lower its flow loss (same rows, same draws)
    assert adapted["new_loss"] < base["new_loss"] and full["new_loss"] < base["new_loss"]
    assert adapted["folder_mb"] < full["folder_mb"] / 2  # adapter folder vs whole pipeline
    assert all(0 <= r[k] <= 1 for r in rows.values() for k in ("new_colour", "new_overall", "old_overall"))
    assert all(r["cpu_s_per_step"] > 0 for r in rows.values())
    assert {"new_colour_vs_full", "new_overall_vs_full", "old_vs_base"} <= set(adapted)


def test_word_split_and_settings(tmp_path):
    """The data split keeps every row exactly once, by word; LoRA settings parse as RANK[:ALPHA[:LR]]."""
    import pyarrow as pa

    from vgt.data.layout import FORMAT_VERSION, KIND, part_uri, write_manifest, write_table_atomic
    from vgt.data.reader import PreparedDataset

    captions = ["a green circle on the left", "a red square and a green triangle", "two blue squares at the top",
                "a greenish thing", "three yellow circles on the right"]
    src = str(tmp_path / "src")
    write_table_atomic(part_uri(src, "part-x-0"), pa.table({"caption": captions, "key": list("abcde")}))
    write_manifest(src, {"kind": KIND, "format_version": FORMAT_VERSION, "config": {},
                         "parts": {"part-x-0": {"complete": True, "rows_out": 5, "source": "x"}}})
    lora.split_by_word(src, "green", str(tmp_path / "with"), str(tmp_path / "without"))
    got = {}
    for name in ("with", "without"):
        ds = PreparedDataset(str(tmp_path / name))
        got[name] = ds.read_part(ds.parts[0], ["caption"]).column("caption").to_pylist()
        assert ds.num_rows == len(got[name])
    assert got["with"] == captions[:2] and got["without"] == captions[2:]

    assert lora.LoRASetting.parse("16") == lora.LoRASetting(16)
    assert lora.LoRASetting.parse("16::3e-3") == lora.LoRASetting(16, None, 3e-3)
    assert lora.LoRASetting(16, 64, 3e-3).overrides() == [
        "train.ar_pretrain.lora.rank=16", "train.ar_pretrain.lora.export=adapter",
        "train.ar_pretrain.lora.alpha=64", "train.ar_pretrain.lr=0.003"]
    with pytest.raises(Exception, match="RANK"):
        lora.LoRASetting.parse("0")
