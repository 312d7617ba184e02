"""Reference (hustvl/VGT) AR checkpoints -> vgt pipeline folders."""
import json
from pathlib import Path

import pytest
import torch

from ray_jobs.cli import main as cli
from ray_jobs.convert import offline_preset
from vgt.backbones import load_tokenizer, random_vlm
from vgt.convert.reference_ar import map_reference_ar
from vgt.presets import get_preset

from reference_layouts import reference_ae_layout, reference_ar_layout

KEYS = json.loads((Path(__file__).parent / "data" / "reference_ar_keys.json").read_text())["internvl3_1b"]


def expand(spec: dict) -> dict[str, list[int]]:
    out = {}
    for pattern, shape in spec["keys"].items():
        for var, n in (("{i}", spec["layers"]), ("{j}", spec["blocks"])):
            if var in pattern:
                out.update({pattern.replace(var, str(k)): shape for k in range(n)})
                break
        else:
            out[pattern] = shape
    return out


def test_complete_reference_ar_key_list_maps_without_gaps():
    from vgt.ar.model import VGTModel

    cfg = offline_preset("internvl3-1b")
    tok = load_tokenizer(get_preset("tiny").ar.backbone)  # token ids do not change any shape
    with torch.device("meta"):
        target = {k: v.shape for k, v in VGTModel(cfg.ar, tokenizer=tok).state_dict().items()}
    ref = {k: torch.empty(s, device="meta") for k, s in expand(KEYS).items()}
    mapped, report = map_reference_ar(ref, set(target))
    assert report.unmapped == [] and report.missing == []
    assert sorted(report.dropped) == ["dinov3_extractor.model.cls_token", "lmm.language_model.lm_head.weight"]
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(s) for k, s in target.items()}


def make_base(tmp_path, preset: str):
    """A tiny base VLM folder (weights + tokenizer), as `--base` would name a real one."""
    cfg = get_preset(preset)
    base = tmp_path / "base"
    random_vlm(cfg.ar.backbone).save_pretrained(base)
    load_tokenizer(cfg.ar.backbone).save_pretrained(base)
    return str(base)


def conditions_and_velocity(model, captions):
    """Teacher-forced conditions for a fixed order, and the head's velocity on them."""
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(len(captions), 16, 32, generator=g)
    orders = torch.stack([torch.randperm(16, generator=g) for _ in captions])
    embeds, mask = model.embed_prompts(model.prompt_texts(captions))
    cond = model.training_conditions(embeds, mask, latents, (4, 4), orders)
    t = torch.rand(cond.shape[0] * 16, generator=g)
    return cond, model.head(latents.reshape(-1, 32), t, cond.reshape(-1, cond.shape[-1]))


@pytest.mark.parametrize("preset,family", [("tiny", "internvl"), ("tiny-qwen", "qwen2_5_vl")])
def test_cli_converts_an_mmengine_ar_checkpoint_into_an_equivalent_pipeline(tmp_path, preset, family):
    from vgt.ae import VGTAutoencoder
    from vgt.ar.model import VGTModel
    from vgt.pipeline import VGTPipeline

    torch.manual_seed(0)
    base = make_base(tmp_path, preset)
    cfg = get_preset(preset)
    model = VGTModel(cfg.ar, tokenizer=load_tokenizer(cfg.ar.backbone)).eval()
    for p in model.head.parameters():  # the zero-initialised head would hide a wrong mapping
        torch.nn.init.normal_(p, std=0.1)
    ema = {f"module.{k}": v for k, v in reference_ar_layout(model.state_dict(), family).items()}
    raw = {k: v + 1 for k, v in ema.items()}
    if family == "internvl":
        ae = {f"module.vgt_ae.{k}": v for k, v in reference_ae_layout(VGTAutoencoder(cfg.ae).state_dict()).items()}
        ema.update(ae)
        raw.update(ae)
        ae_args = []
    else:  # the Qwen model registers its LLM twice; the AE comes as a folder
        for d in (ema, raw):
            d.update({k.replace("lmm.model.language_model.", "lmm.language_model."): v
                      for k, v in d.items() if ".model.language_model." in k})
        VGTAutoencoder(cfg.ae).save_pretrained(str(tmp_path / "ae"))
        ae_args = ["--ae", str(tmp_path / "ae")]
    torch.save({"meta": {"iter": 5000}, "state_dict": ema, "ema_state_dict": {"steps": torch.tensor(5000), **raw}},
               tmp_path / "iter_5000.pth")

    args = ["convert", "--from", "reference", "--in", str(tmp_path / "iter_5000.pth"), "--base", base,
            "--preset", preset, *ae_args]
    assert cli([*args, "--out", str(tmp_path / "pipe")]) == 0
    pipe = VGTPipeline.from_pretrained(str(tmp_path / "pipe"))
    captions = ["a red circle", "two blue squares on the left"]
    with torch.no_grad():
        for got, want in zip(conditions_and_velocity(pipe.model, captions), conditions_and_velocity(model, captions)):
            assert torch.equal(got, want)
        assert cli([*args, "--weights", "raw", "--out", str(tmp_path / "raw")]) == 0
        raw_head = VGTPipeline.from_pretrained(str(tmp_path / "raw")).model.head
        assert torch.equal(raw_head.cond_embed.weight, model.head.cond_embed.weight + 1)


def test_layer_pruned_checkpoint_keeps_exactly_its_layers(tmp_path, capsys):
    from vgt.ae import VGTAutoencoder
    from vgt.ar.model import VGTModel

    cfg = get_preset("tiny")
    state = reference_ar_layout(VGTModel(cfg.ar).state_dict(), "internvl")
    state = {k: v for k, v in state.items() if ".layers.1." not in k}  # keep the first of 2 layers
    state.update({f"vgt_ae.{k}": v for k, v in reference_ae_layout(VGTAutoencoder(cfg.ae).state_dict()).items()})
    torch.save({"state_dict": state}, tmp_path / "pruned.pth")
    assert cli(["convert", "--from", "reference", "--in", str(tmp_path / "pruned.pth"), "--preset", "tiny",
                "--out", str(tmp_path / "pipe")]) == 0
    assert "LLM layers: 1" in capsys.readouterr().out
    from vgt.pipeline import VGTPipeline

    assert VGTPipeline.from_pretrained(str(tmp_path / "pipe")).model.llm.num_layers == 1
    del state["image_head.net.cond_embed.bias"]
    torch.save({"state_dict": state}, tmp_path / "broken.pth")
    assert cli(["convert", "--from", "reference", "--in", str(tmp_path / "broken.pth"), "--preset", "tiny",
                "--out", str(tmp_path / "broken")]) == 1
    assert "missing head.cond_embed.bias" in capsys.readouterr().err
