"""Reference (hustvl/VGT) AR checkpoints -> vgt pipeline folders."""
import importlib.util
import sys
import types

import numpy as np

import pytest
import torch

from ray_jobs.cli import main as cli
from ray_jobs.convert import offline_preset
from vgt.backbones import load_tokenizer, random_vlm
from vgt.convert.reference import TEACHER, map_reference_ae
from vgt.convert.reference_ar import (NO_REPA, checkpoint_llm_layers, load_reference_ar, map_reference_ar,
                                      reference_ae_part)
from vgt.presets import get_preset

from reference_layouts import DATA, reference_ae_layout, reference_ar_layout, reference_key_list

# the released AR checkpoints, trained with REPA: (key list in reference_ar_keys.json, our preset)
RELEASED = [("internvl3_1b_repa", "internvl3-1b"), ("internvl3_2b_repa", "internvl3-2b")]


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def meta_targets(preset: str, overrides: list[str]) -> tuple[dict, dict]:
    """Key -> shape of our AR model and AE for `preset` (meta device: no weights, no hub)."""
    from vgt.ae import VGTAutoencoder
    from vgt.ar.model import VGTModel

    cfg = offline_preset(preset, overrides)
    tok = load_tokenizer(get_preset("tiny").ar.backbone)  # token ids do not change any shape
    with torch.device("meta"):
        return shapes(VGTModel(cfg.ar, tokenizer=tok).state_dict()), shapes(VGTAutoencoder(cfg.ae).state_dict())


def meta_reference(name: str) -> dict[str, torch.Tensor]:
    return {k: torch.empty(s, device="meta") for k, s in reference_key_list("reference_ar_keys.json", name).items()}


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name,preset", RELEASED)
def test_complete_released_ar_key_lists_with_repa_map_without_gaps(name, preset):
    """Every key of a released checkpoint (derived from the reference's modules) finds its place in a target
    that keeps the REPA projector; only the LM head and the DINOv3 teacher are dropped."""
    ref = meta_reference(name)
    ar_target, ae_target = meta_targets(preset, ["ar.head.repa_dim=768"])
    assert checkpoint_llm_layers(ref) == get_preset(preset).ar.backbone.hf_config["text_config"]["num_hidden_layers"]
    mapped, report = map_reference_ar(ref, set(ar_target))
    assert report.unmapped == [] and report.missing == []
    teacher = [k for k in ref if k.startswith("dinov3_extractor.")]
    assert len(teacher) == 162 and sorted(report.dropped) == sorted(["lmm.language_model.lm_head.weight", *teacher])
    assert shapes(mapped) == ar_target and any(k.startswith("head.repa_projector.") for k in mapped)

    ae_mapped, ae_report = map_reference_ae(reference_ae_part(ref), "internvl", set(ae_target))
    assert ae_report.unmapped == [] and ae_report.missing == []
    assert list(ae_report.dropped_why) == [TEACHER] and shapes(ae_mapped) == ae_target


@pytest.mark.timeout(120)
def test_a_target_without_repa_drops_the_projector_and_reports_how_many():
    ref = meta_reference("internvl3_1b_repa")
    ar_target, _ = meta_targets("internvl3-1b", [])  # REPA is opt-in: the preset has no projector
    mapped, report = map_reference_ar(ref, set(ar_target))
    assert report.ok
    projector = [k for k in ref if k.startswith("image_head.net.repa_projector.")]
    assert len(projector) == 6 and report.dropped_why[NO_REPA] == projector
    assert f"  dropped 6: {NO_REPA}" in report.summary().splitlines()
    assert not any("repa" in k for k in mapped) and shapes(mapped) == ar_target


@pytest.mark.timeout(120)
def test_committed_key_lists_are_what_the_generator_derives():
    spec = importlib.util.spec_from_file_location("reference_keys", DATA / "reference_keys.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    assert (DATA / "reference_ae_keys.json").read_text() == generator.render(generator.ae_lists())
    assert (DATA / "reference_ar_keys.json").read_text() == generator.render(generator.ar_lists())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("weights,key,offset", [("ema", "state_dict", 0), ("raw", "ema_state_dict", 1)])
def test_weights_choice_reads_the_named_top_level_key(tmp_path, weights, key, offset):
    """The reference's files hold EMA weights in `state_dict` and raw ones in `ema_state_dict` (its EMA hook
    swaps them); each --weights choice must bring the tensors of its own key."""
    ema = {"module.image_in_projector.weight": torch.zeros(4, 2),
           "module.image_head.net.cond_embed.bias": torch.zeros(3)}
    raw = {k: v + 1 for k, v in ema.items()}
    torch.save({"meta": {"iter": 10}, "state_dict": ema, "ema_state_dict": {"steps": torch.tensor(10), **raw}},
               tmp_path / "iter_10.pth")
    state, source = load_reference_ar(str(tmp_path / "iter_10.pth"), weights)
    assert source.startswith(f"'{key}' (--weights {weights}:")
    for name, tensor in ema.items():
        assert torch.equal(state[name.removeprefix("module.")], tensor + offset)
    assert ("steps" in state) == (weights == "raw")

    torch.save({"state_dict": ema}, tmp_path / "no_ema.pth")  # one weight set: read, and said so
    state, source = load_reference_ar(str(tmp_path / "no_ema.pth"), weights)
    assert source.startswith("'state_dict' (the file has no") == (weights == "raw")
    assert torch.equal(state["image_in_projector.weight"], ema["module.image_in_projector.weight"])


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


@pytest.mark.timeout(60)
def test_mmengine_training_checkpoints_are_read_without_running_their_pickled_objects(tmp_path, monkeypatch):
    """An mmengine iter_N.pth also pickles Python objects (HistoryBuffer in message_hub, numpy values in meta).
    They are read as inert placeholders: the tensors arrive and the original classes never run."""
    ran = []

    class HistoryBuffer:  # stands where mmengine's class would be imported from
        __module__, __qualname__ = "mmengine.logging.history_buffer", "HistoryBuffer"

        def __setstate__(self, state):
            ran.append(state)
            self.__dict__.update(state)

    for name in ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer"):  # what pickle imports
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["mmengine.logging.history_buffer"].HistoryBuffer = HistoryBuffer
    buffer = HistoryBuffer()
    buffer._log_history = np.arange(3.0)
    weights = {"module.image_in_projector.weight": torch.randn(4, 2)}
    torch.save({"meta": {"iter": 10, "seed": np.int64(7)}, "state_dict": weights,
                "message_hub": {"log_scalars": {"train/loss": buffer}}}, tmp_path / "iter_10.pth")

    state, source = load_reference_ar(str(tmp_path / "iter_10.pth"))
    assert torch.equal(state["image_in_projector.weight"], weights["module.image_in_projector.weight"])
    assert ran == [] and source.startswith("'state_dict' (--weights ema:")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("preset,family", [("tiny", "internvl"), ("tiny-qwen", "qwen2_5_vl")])
def test_cli_converts_an_mmengine_ar_checkpoint_into_an_equivalent_pipeline(tmp_path, capsys, preset, family):
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
    assert "AR: read 'state_dict' (--weights ema:" in capsys.readouterr().out
    pipe = VGTPipeline.from_pretrained(str(tmp_path / "pipe"))
    captions = ["a red circle", "two blue squares on the left"]
    with torch.no_grad():
        for got, want in zip(conditions_and_velocity(pipe.model, captions), conditions_and_velocity(model, captions)):
            assert torch.equal(got, want)
        assert cli([*args, "--weights", "raw", "--out", str(tmp_path / "raw")]) == 0
        out = capsys.readouterr().out
        assert "AR: read 'ema_state_dict' (--weights raw:" in out and "dropped 1: steps:" in out
        raw_head = VGTPipeline.from_pretrained(str(tmp_path / "raw")).model.head
        assert torch.equal(raw_head.cond_embed.weight, model.head.cond_embed.weight + 1)


@pytest.mark.timeout(120)
def test_cli_keeps_or_drops_a_repa_projector_as_the_target_config_says(tmp_path, capsys):
    from vgt.ae import VGTAutoencoder
    from vgt.ar.model import VGTModel
    from vgt.pipeline import VGTPipeline

    torch.manual_seed(0)
    cfg = get_preset("tiny", ["ar.head.repa_dim=8"])
    model = VGTModel(cfg.ar)
    for p in model.head.repa_projector.parameters():
        torch.nn.init.normal_(p)
    state = reference_ar_layout(model.state_dict(), "internvl")
    state.update({f"vgt_ae.{k}": v for k, v in reference_ae_layout(VGTAutoencoder(cfg.ae).state_dict()).items()})
    torch.save({"state_dict": state}, tmp_path / "repa.pth")
    args = ["convert", "--from", "reference", "--in", str(tmp_path / "repa.pth"), "--preset", "tiny"]

    assert cli([*args, "--set", "ar.head.repa_dim=8", "--out", str(tmp_path / "keep")]) == 0
    assert NO_REPA not in capsys.readouterr().out
    kept = VGTPipeline.from_pretrained(str(tmp_path / "keep")).model.head.repa_projector
    for got, want in zip(kept.parameters(), model.head.repa_projector.parameters(), strict=True):
        assert torch.equal(got, want)

    assert cli([*args, "--out", str(tmp_path / "drop")]) == 0
    assert f"  dropped 6: {NO_REPA}" in capsys.readouterr().out.splitlines()
    assert VGTPipeline.from_pretrained(str(tmp_path / "drop")).model.head.repa_projector is None


@pytest.mark.timeout(120)
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
