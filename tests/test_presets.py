"""Presets: names, faithful numbers, overrides, errors, meta-device counts and the memory formula."""
from __future__ import annotations

import pytest

from vgt.footprint import count_parameters, count_vlm_parameters, estimate_train_memory
from vgt.config import ConfigError, VGTConfig, from_dict, to_dict
from vgt.presets import get_preset, list_presets

REAL = ["internvl3-1b", "internvl3-2b", "qwen25vl-3b"]


def test_preset_names():
    assert list_presets() == ["tiny", "tiny-qwen", "demo", *REAL]


@pytest.mark.parametrize("name", ["tiny", "tiny-qwen", "demo", *REAL])
def test_presets_round_trip_through_json(name):
    cfg = get_preset(name)
    assert cfg.name == name
    assert from_dict(VGTConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("name,family", [("tiny", "internvl"), ("tiny-qwen", "qwen2_5_vl")])
def test_tiny_presets_are_offline_and_small(name, family):
    cfg = get_preset(name)
    for backbone in (cfg.ae.backbone, cfg.ar.backbone):
        assert backbone.family == family and backbone.pretrained is None and backbone.tokenizer == "tiny-bpe"
    assert cfg.ae.decoder.pretrained is None
    assert cfg.data.resolution == 112 and cfg.data.resolution // 28 == 4  # 4x4 latent grid
    dc = cfg.ae.decoder.dc_config
    assert 4 * 2 ** (len(dc["decoder_block_out_channels"]) - 1) >= 112  # decoder output covers 112 px
    for stage in (cfg.train.ae_stage1, cfg.train.ae_stage2):
        assert stage.lpips_weight == 0 and stage.convnext_weight == 0 and stage.steps <= 4
    assert cfg.sample.num_steps <= 4 and (cfg.ar.head.width, cfg.ar.head.depth) == (64, 2)
    assert cfg.ar.head.timeshift == (1.4 if family == "internvl" else None)


@pytest.mark.timeout(60)
def test_tiny_tokenizer_spends_one_token_per_caption_word():
    """The tiny LLM learns "three circles" faster as 2 tokens than as " th|re|e c|ir|cle|s", and every
    token of the prompt is paid for in each training step (README "Why the demo learns slowly")."""
    from vgt.backbones import load_tokenizer
    from vgt.eval.shapes import caption, eval_prompts, train_specs

    cfg = get_preset("demo")
    tok = load_tokenizer(cfg.ar.backbone)
    # <|im_start|> user \n Generate " an" " image" ":" ... <|im_end|> \n <|im_start|> assistant \n
    template_tokens = 12
    for text in [caption(spec) for spec in [*train_specs(), *eval_prompts()]]:
        ids = tok(cfg.ar.prompt_template.replace("{caption}", text), add_special_tokens=False)["input_ids"]
        pieces = [tok.decode([i]) for i in ids[7:-5]]  # between "Generate an image:" and <|im_end|>
        assert len(ids) == template_tokens + len(text.split()) and [p.strip() for p in pieces] == text.split(), pieces
    assert tok.decode(tok("a cat on a sofa, 3 km away")["input_ids"]) == "a cat on a sofa, 3 km away"  # any text


def test_real_presets_follow_the_reference():
    one, two, qwen = (get_preset(n) for n in REAL)
    for cfg in (one, two, qwen):
        assert cfg.data.resolution == 448
        assert (cfg.ar.head.width, cfg.ar.head.depth) == (1536, 12)
        assert cfg.ae.decoder.pretrained == "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers"
        assert cfg.ae.decoder.dc_config["latent_channels"] == cfg.ae.latent_channels == 32
        assert cfg.ar.llm_num_layers is None
    # one AE (InternVL3-1B vision + projector) serves both InternVL AR models (docs/reference.md §1.1)
    assert one.ae.backbone == two.ae.backbone
    assert one.ae.backbone.pretrained == one.ar.backbone.pretrained == "OpenGVLab/InternVL3-1B-hf"
    assert two.ar.backbone.pretrained == "OpenGVLab/InternVL3-2B-hf"
    assert qwen.ae.backbone.pretrained == qwen.ar.backbone.pretrained == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert (one.ar.head.timeshift, two.ar.head.timeshift, qwen.ar.head.timeshift) == (1.4, 1.4, None)
    # LLM width x depth of docs/reference.md §2.1: 896 x 24, 1536 x 28, 2048 x 36
    shapes = [(c.ar.backbone.hf_config["text_config"]["hidden_size"],
               c.ar.backbone.hf_config["text_config"]["num_hidden_layers"]) for c in (one, two, qwen)]
    assert shapes == [(896, 24), (1536, 28), (2048, 36)]
    # AE recipe (docs/reference.md §1.5) and AR recipe (docs/reference.md §3.2) come from the config defaults
    assert (one.train.ae_stage1.lr, one.train.ae_stage2.noise_gamma, one.train.ar_pretrain.lr) == (3e-4, 0.1, 3e-4)


def test_presets_are_fresh_objects():
    a = get_preset("tiny")
    a.ae.backbone.hf_config["text_config"]["hidden_size"] = 7
    assert get_preset("tiny").ae.backbone.hf_config["text_config"]["hidden_size"] == 64


def test_dotted_overrides():
    cfg = get_preset("tiny", ["ar.head.depth=3", "data.resolution=224", "ar.head.timeshift=null"])
    assert (cfg.ar.head.depth, cfg.data.resolution, cfg.ar.head.timeshift) == (3, 224, None)
    cfg = get_preset("internvl3-1b", {"ae.noise_gamma": 0.2, "ar.llm_num_layers": 12})
    assert (cfg.ae.noise_gamma, cfg.ar.llm_num_layers) == (0.2, 12)


def test_unknown_override_key_names_nearest():
    with pytest.raises(ConfigError, match=r"'ar.head.dept'.*did you mean 'ar.head.depth'"):
        get_preset("tiny", ["ar.head.dept=3"])


def test_unknown_preset_names_nearest():
    with pytest.raises(ConfigError, match=r"unknown preset 'internvl3-1B'.*did you mean 'internvl3-1b'"):
        get_preset("internvl3-1B")


# ---------------------------------------------------------------- counts and memory


def test_counts_split_the_components_of_tiny(tiny_cfg):
    from vgt.backbones import load_vision_encoder

    c = count_parameters(tiny_cfg)
    assert c["ae"] == c["ae.encoder"] + c["ae.bottleneck"] + c["ae.decoder"]
    assert c["ar"] == c["ar.llm"] + c["ar.head"] + c["ar.adapters"]
    assert c["ae.encoder"] == sum(p.numel() for p in load_vision_encoder(tiny_cfg.ae.backbone).parameters())
    # bottleneck at width D=64, 32 latent channels: 3 x [LN(D) + D->D + D->D] + LN(D) + D->32 + 32->32
    d = 64
    assert c["ae.bottleneck"] == 3 * (2 * d + 2 * (d * d + d)) + 2 * d + (d * 32 + 32) + (32 * 32 + 32)


def test_counts_of_real_preset_reuse_vlm_parts():
    cfg = get_preset("internvl3-1b")
    c = count_parameters(cfg)
    vlm = count_vlm_parameters(cfg.ae.backbone)
    assert c["ae.encoder"] == vlm["vision"] + vlm["projector"]
    assert c["ar.llm"] == vlm["llm"]
    # truncation keeps the first 12 of 24 decoder layers; one Qwen2.5-0.5B layer, by hand:
    # q 896*896+896, k/v 2*(896*128+128), o 896*896, MLP 3*896*4864, 2 RMSNorms 2*896
    layer = (896 * 896 + 896) + 2 * (896 * 128 + 128) + 896 * 896 + 3 * 896 * 4864 + 2 * 896
    half = count_parameters(get_preset("internvl3-1b", ["ar.llm_num_layers=12"]))
    assert c["ar.llm"] - half["ar.llm"] == 12 * layer


def test_memory_formula():
    counts = {"ae": 10, "ae.encoder": 4, "ar": 100, "ar.llm": 60, "ar.lora": 3}
    mem = estimate_train_memory(None, counts)
    # AE: 2 B bf16 for trainable + teacher, then 2 (grad) + 4 (master) + 8 (AdamW) per trainable
    assert mem["ae"]["total_bytes"] == 2 * (10 + 4) + (2 + 4 + 8) * 10
    assert mem["ar"]["total_bytes"] == 2 * (100 + 10) + (2 + 4 + 8) * 100
    assert mem["ar"]["total_gib"] == mem["ar"]["total_bytes"] / 2**30
    # LoRA: the LLM joins the frozen weights; its adapters, the head, queries and projections train
    assert mem["ar_lora"]["total_bytes"] == 2 * (43 + 10 + 60) + (2 + 4 + 8) * 43
