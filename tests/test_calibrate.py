"""`python -m pipelines.bench.calibrate`: both engine stages on the `tiny` preset for a couple of CPU-seconds, in-process."""
from __future__ import annotations

import json
import os
import math

import pytest

from pipelines.bench import calibrate
from vgt.presets import get_preset

TINY = ["--preset", "tiny", "--minutes", "0.03", "--marks", "0.01,0.03", "--train-images", "64", "--steps", "100000"]


def records(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def check_marks(recs: list[dict], stage: str, batch_size: int) -> None:
    assert [r["cpu_min"] for r in recs] == [0.01, 0.03]
    for r in recs:
        assert r["stage"] == stage and r["step"] > 0 and r["images_seen"] == r["step"] * batch_size
        assert all(0 <= r[t] <= 1 for t in calibrate.TASKS)


@pytest.mark.timeout(120)  # ~15 s on one idle core
def test_ae_then_ar_report_every_mark_and_save_loadable_folders(tmp_path, capsys):
    from vgt.ae import VGTAutoencoder
    from vgt.pipeline import VGTPipeline

    train = get_preset("tiny").train
    assert calibrate.main(["ae", *TINY, "--out", str(tmp_path / "ae")]) == 0
    out = capsys.readouterr().out
    ae_recs = records(out)
    check_marks(ae_recs, "ae", train.ae_stage1.batch_size)
    assert all(math.isfinite(r["psnr"]) and r["psnr"] > 5 for r in ae_recs)
    assert out.count("\n| 0.0") == 2  # one markdown row per mark
    VGTAutoencoder.from_pretrained(str(tmp_path / "ae" / "export"))

    ae = str(tmp_path / "ae" / "export")
    assert calibrate.main(["ar", *TINY, "--ae", ae, "--out", str(tmp_path / "ar")]) == 0
    ar_recs = records(capsys.readouterr().out)
    check_marks(ar_recs, "ar", train.ar_pretrain.batch_size)
    assert "psnr" not in ar_recs[0]
    assert all(0 <= r[f"in_dist_{t}"] <= 1 for r in ar_recs for t in calibrate.IN_DIST_TASKS)
    # the word-reliance probe (vgt.eval.shapes.reliance): a loss ratio per attribute at every mark
    assert all(math.isfinite(r[f"reliance_{a}"]) and r[f"reliance_{a}"] > 0
               for r in ar_recs for a in calibrate.RELIANCE_COLUMNS)
    VGTPipeline.from_pretrained(str(tmp_path / "ar" / "export"))
    assert (tmp_path / "ar" / "samples.png").is_file()


def test_unknown_override_is_one_clear_line(tmp_path, capsys):
    assert calibrate.main(["ae", "--preset", "tiny", "--out", str(tmp_path / "ae"), "--set", "ae.nosuch=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown config key 'ae.nosuch'") and "Traceback" not in err


def test_marks_are_clipped_to_the_budget():
    assert calibrate.clip_marks([1, 2, 4, 6], 3) == [1, 2, 3]
    assert calibrate.clip_marks([1, 2, 4, 6], 8) == [1, 2, 4, 6, 8]


@pytest.mark.timeout(120)
def test_steps_ending_before_the_last_mark_record_once_at_the_end(tmp_path, capsys):
    assert calibrate.main(["ae", "--preset", "tiny", "--minutes", "5", "--train-images", "16", "--steps", "3",
                           "--out", str(tmp_path / "ae")]) == 0
    (rec,) = records(capsys.readouterr().out)
    assert rec["step"] == 3 and 0 < rec["cpu_min"] < 5


def test_in_distribution_prompts_are_training_combinations_of_the_benchmark_kinds():
    from vgt.eval.shapes import eval_prompts
    from vgt.eval.shapes.vocab import heldout

    picked = calibrate.in_distribution_prompts()
    assert not any(heldout(s) for s in picked) and len(set(picked)) == len(picked)
    assert sorted(s.kind for s in picked) == sorted(s.kind for s in eval_prompts())
    assert picked == calibrate.in_distribution_prompts()  # a fixed draw


def test_every_learning_variant_changes_what_it_names_on_the_demo_preset():
    from pipelines.bench import learning
    from vgt.config import to_dict
    from vgt.presets import get_preset

    def flat(d, prefix=""):
        return {k2: v2 for k, v in d.items()
                for k2, v2 in (flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}).items()}

    base = flat(to_dict(get_preset("demo")))
    for name, variant in learning.VARIANTS.items():
        overrides = list(variant.ae + variant.ar)
        changed = {k for k, v in flat(to_dict(get_preset("demo", overrides))).items() if base.get(k) != v}
        assert changed == {o.split("=", 1)[0] for o in overrides}, name


@pytest.mark.timeout(180)
def test_learning_benchmark_quick_compares_variants_on_the_engine(tmp_path):
    from pipelines.bench import learning

    variants = {"preset": learning.Variant(), "batch order": learning.Variant(ar=("ar.per_sample_order=false",)),
                "AE noise": learning.Variant(ae=("train.ae_stage1.noise_gamma=0.2",))}
    rows = learning.run(quick=True, variants=variants, root=str(tmp_path))
    assert [(r["variant"], r["cpu_min"]) for r in rows] == [
        (v, m) for v in variants for m in learning.QUICK.marks]
    for r in rows:
        assert r["steps"] > 0 and r["samples_per_cpu_min"] == pytest.approx(r["samples"] / r["cpu_min"])
        assert all(0 <= r[c] <= 1 for c in learning.COLUMNS)
    # the second variant reused the first one's AE; the third trained its own
    assert sorted(os.listdir(tmp_path)) == ["ae-0", "ae-1", "ar-0", "ar-1", "ar-2"]
    from vgt.ae import VGTAutoencoder

    assert VGTAutoencoder.from_pretrained(str(tmp_path / "ae-1" / "export")).config.noise_gamma == 0.2
