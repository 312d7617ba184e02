import json
import re

import pytest

from ray_jobs.cli import main as cli
from vgt.footprint import count_parameters
from vgt.presets import get_preset


def test_info_reports_meta_counts_and_memory(capsys):
    assert cli(["info", "--preset", "tiny", "--preset", "internvl3-1b", "--json"]) == 0
    rows = {r["preset"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny"]["ae_params"] == count_parameters(get_preset("tiny"))["ae"]
    real = rows["internvl3-1b"]
    assert real["px"] == 448 and real["family"] == "internvl"
    # Qwen2.5-0.5B with InternVL3's vocabulary: ~0.49B (model card); the flow head ~150M (docs/reference.md §2.5)
    assert 0.48e9 < real["ar_llm_params"] < 0.50e9 and 0.14e9 < real["ar_head_params"] < 0.16e9
    # bf16 weights + fp32 AdamW: 16 bytes per trainable parameter, 2 per frozen (the AE)
    expected = (16 * real["ar_params"] + 2 * real["ae_params"]) / 2**30
    assert abs(real["ar_train_gib"] - expected) < 0.01


def test_info_unknown_preset_is_one_clear_line(capsys):
    assert cli(["info", "--preset", "tiny-qwn"]) == 2
    assert "did you mean 'tiny-qwen'" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_info_states_the_attention_kernel_on_gpu_and_cpu(capsys):
    assert cli(["info", "--preset", "tiny", "--preset", "internvl3-1b", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(r["attn_gpu"] == "flash_attention_2" and r["attn_cpu"] == "sdpa" for r in rows)
    assert cli(["info", "--preset", "tiny", "--json", "--set", "ar.backbone.attn_implementation=eager"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["attn_gpu"] == "ae flash_attention_2 / ar eager" and row["attn_cpu"] == "ae sdpa / ar eager"
    assert cli(["info", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "attn_gpu" in out and re.search(r"where flash-attn imports; sdpa where it does not\. Here: (imports|no) ", out)
