"""Backbone adapters against transformers' own code paths, on tiny random VLMs (CPU, fp32)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from vgt.backbones import (TINY_INTERNVL, TINY_QWEN, encoder_from_vlm, language_model_from_vlm,
                           load_language_model, load_tokenizer, load_vision_encoder, random_vlm, token_id)
from vgt.footprint import count_vlm_parameters
from vgt.backbones.language import truncate_layers
from vgt.backbones.real_configs import DC_AE_F32C32_SANA, INTERNVL3_1B, INTERNVL3_2B, QWEN25VL_3B
from vgt.backbones.tokenizer import TINY_SPECIALS, _tiny_bpe_json
from vgt.backbones.vision import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, pixel_shuffle, qwen_patchify
from vgt.config import BackboneConfig

TINY = {"internvl": TINY_INTERNVL, "qwen2_5_vl": TINY_QWEN}


def backbone(family: str, **kw) -> BackboneConfig:
    return BackboneConfig(family=family, hf_config=copy.deepcopy(TINY[family]), attn_implementation="sdpa", **kw)


@pytest.fixture(scope="module", params=["internvl", "qwen2_5_vl"])
def family(request):
    return request.param


@pytest.fixture(scope="module")
def vlm(family):
    torch.manual_seed(0)
    return random_vlm(backbone(family))


def images(batch: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Pixels in [-1, 1] that are exact uint8 levels (so a PIL round trip is lossless)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, h, w), generator=g).float() / 255 * 2 - 1


def test_attn_implementation_choice(monkeypatch):
    from vgt.backbones import families

    # the full matrix (devices, compute dtypes, a flash-attn that does not import): tests/test_attention.py
    assert families.resolve_attn_implementation("eager", "cuda", torch.bfloat16) == "eager"
    monkeypatch.setattr(families, "flash_attention_importable", lambda: (True, "flash_attn 2.7.4"))
    assert families.resolve_attn_implementation("auto", "cuda", torch.bfloat16) == "flash_attention_2"
    assert families.resolve_attn_implementation("auto", "cuda", torch.float32) == "sdpa"  # flash is 16-bit only
    assert families.resolve_attn_implementation("auto", "cpu", torch.bfloat16) == "sdpa"
    monkeypatch.setattr(families, "flash_attention_importable", lambda: (False, "not installed"))
    assert families.resolve_attn_implementation("auto", "cuda", torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="did you mean 'qwen2_5_vl'"):
        families.check_family("qwen2.5_vl")


# ---------------------------------------------------------------- vision encoder


@pytest.mark.parametrize("h,w", [(112, 112), (224, 224), (112, 224)])
def test_token_count_is_grid_of_stride_28(family, h, w):
    torch.manual_seed(0)
    enc = load_vision_encoder(backbone(family))
    assert enc.stride == 28 and enc.out_dim == 64
    with torch.no_grad():
        out = enc(images(2, h, w))
    assert out.shape == (2, (h // 28) * (w // 28), 64)


def test_bad_inputs_are_clear_errors(family):
    enc = load_vision_encoder(backbone(family))
    with pytest.raises(ValueError, match="multiple of the encoder stride 28"):
        enc(images(1, 112, 100))
    with pytest.raises(ValueError, match="high > low"):
        enc(images(1, 112, 112), input_range=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        enc(torch.zeros(1, 1, 112, 112))


def test_input_range_is_explicit(vlm, family):
    enc = encoder_from_vlm(vlm, family)
    x = images(2, 112, 112)
    unit = (x + 1) / 2
    with torch.no_grad():
        ref = enc(x, input_range=(-1.0, 1.0))
        torch.testing.assert_close(enc(unit, input_range=(0.0, 1.0)), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc(unit * 255, input_range=(0, 255)), ref, atol=1e-5, rtol=1e-5)
        # no guessing from the data: [0,1] pixels read as [-1,1] are a different (darker) image
        assert (enc(unit, input_range=(-1.0, 1.0)) - ref).abs().max() > 1e-2


def test_pixel_shuffle_matches_transformers_ordering():
    from transformers.models.internvl.modeling_internvl import InternVLModel

    grid = torch.randn(2, 8, 8, 5)
    ref = InternVLModel.pixel_shuffle(None, grid, scale_factor=0.5)
    assert torch.equal(pixel_shuffle(grid, 2), ref)
    # hand check of one cell: out (i,j) channel di*2C + dj*C + c = in (2i+di, 2j+dj, c)
    out = pixel_shuffle(grid, 2)
    assert torch.equal(out[1, 2, 3].view(2, 2, 5), grid[1, 4:6, 6:8])


def _normalise(x, mean, std):
    return ((x + 1) / 2 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.mark.parametrize("size", [112, 224])
def test_internvl_features_equal_get_image_features(size):
    torch.manual_seed(0)
    vlm = random_vlm(backbone("internvl"))
    x = images(2, size, size)
    with torch.no_grad():
        ours = encoder_from_vlm(vlm, "internvl")(x)
        ref = vlm.get_image_features(pixel_values=_normalise(x, IMAGENET_MEAN, IMAGENET_STD),
                                     vision_feature_layer=-1, vision_feature_select_strategy="default")
    assert ref.pooler_output.shape == ours.shape == (2, (size // 28) ** 2, 64)
    assert torch.equal(ours, ref.pooler_output)  # same ops on the same numbers: bitwise


def _processor_inputs(x: torch.Tensor):
    from transformers import Qwen2VLImageProcessorPil

    h, w = x.shape[-2:]
    proc = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=h * w, patch_size=14, merge_size=2,
                                    temporal_patch_size=2)
    pil = [Image.fromarray(((im + 1) / 2 * 255).round().byte().permute(1, 2, 0).numpy()) for im in x]
    return proc(images=pil, return_tensors="pt")


@pytest.mark.parametrize("h,w", [(112, 112), (112, 168)])
def test_qwen_layout_and_features_equal_processor_path(h, w):
    torch.manual_seed(0)
    vlm = random_vlm(backbone("qwen2_5_vl"))
    x = images(2, h, w)
    iv = _processor_inputs(x)
    assert iv["image_grid_thw"].tolist() == [[1, h // 14, w // 14]] * 2
    ours_patches = qwen_patchify(_normalise(x, CLIP_MEAN, CLIP_STD), 14, 2, 2)
    torch.testing.assert_close(ours_patches, iv["pixel_values"], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ours = encoder_from_vlm(vlm, "qwen2_5_vl")(x)
        ref = vlm.model.visual(iv["pixel_values"], grid_thw=iv["image_grid_thw"]).pooler_output
    assert ours.shape == (2, (h // 28) * (w // 28), 64)
    torch.testing.assert_close(ours.reshape(-1, 64), ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- language model


def _text_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 500, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding, as our tokenizer pads
    return ids, mask


def test_llm_matches_full_vlm(vlm, family):
    llm = language_model_from_vlm(vlm, family)
    ids, mask = _text_batch()
    positions = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        emb = llm.embed(ids)
        hidden, _ = llm(emb, attention_mask=mask, position_ids=positions)
        ref = vlm(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert torch.equal(emb, vlm.get_input_embeddings()(ids))
    assert llm.hidden_size == 64 and hidden.shape == (2, 9, 64)
    valid = mask.bool()
    assert torch.equal(hidden[valid], ref[valid])  # same kernels and positions: bitwise


def test_kv_cache_incremental_equals_full(vlm, family):
    llm = language_model_from_vlm(vlm, family)
    ids, _ = _text_batch(1)
    mask = torch.ones_like(ids)
    pos = torch.arange(9).expand(2, 9)
    with torch.no_grad():
        emb = llm.embed(ids)
        full, _ = llm(emb, mask, pos)
        first, cache = llm(emb[:, :5], mask[:, :5], pos[:, :5], use_cache=True)
        second, cache = llm(emb[:, 5:7], mask[:, :7], pos[:, 5:7], past_key_values=cache, use_cache=True)
        third, cache = llm(emb[:, 7:], mask, pos[:, 7:], past_key_values=cache, use_cache=True)
    assert cache.get_seq_length() == 9
    torch.testing.assert_close(torch.cat([first, second, third], 1), full, atol=1e-5, rtol=1e-5)


def test_num_layers_keeps_first_layers(family):
    cfg = backbone(family)
    cfg.hf_config["text_config"]["num_hidden_layers"] = 3
    torch.manual_seed(0)
    vlm = random_vlm(cfg)
    full = vlm.model.language_model
    cut = copy.deepcopy(full)
    truncate_layers(cut, 2)
    assert len(cut.layers) == 2 and cut.config.num_hidden_layers == 2 and len(cut.config.layer_types) == 2
    ref_sd = full.state_dict()
    cut_sd = cut.state_dict()
    assert not any(k.startswith("layers.2.") for k in cut_sd)
    assert set(cut_sd) == {k for k in ref_sd if not k.startswith("layers.2.")}
    assert all(torch.equal(v, ref_sd[k]) for k, v in cut_sd.items())
    with pytest.raises(ValueError, match=r"num_layers must be in \[1, 2\]"):
        truncate_layers(cut, 3)


def test_pretrained_folder_loads_and_truncates(vlm, family, tmp_path):
    vlm.save_pretrained(tmp_path)
    cfg = BackboneConfig(family=family, pretrained=str(tmp_path), attn_implementation="sdpa")
    llm = load_language_model(cfg, num_layers=1)
    assert llm.num_layers == 1 and llm.model.config.num_hidden_layers == 1
    ref_sd = vlm.model.language_model.state_dict()
    for k, v in llm.model.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k
    enc = load_vision_encoder(cfg)
    x = images(1, 112, 112)
    with torch.no_grad():
        assert torch.equal(enc(x), encoder_from_vlm(vlm, family)(x))


# ---------------------------------------------------------------- tokenizer


def test_tiny_tokenizer_specials_roundtrip_and_determinism():
    tok = load_tokenizer(BackboneConfig(tokenizer="tiny-bpe"))
    assert len(tok) == 512
    assert [token_id(tok, t) for t in TINY_SPECIALS] == list(range(10))
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 0 and tok.padding_side == "right"
    text = "<|im_start|>user\nGenerate an image: a zebra, 3 üñï <img></img>çødé!<|im_end|>"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    assert ids.count(token_id(tok, "<img>")) == 1
    batch = tok(["a cat", "a much longer caption here"], padding=True).attention_mask
    assert batch[0][-1] == 0 and batch[1][-1] == 1
    assert _tiny_bpe_json.__wrapped__() == _tiny_bpe_json.__wrapped__()  # retrained: same vocab and merges
    with pytest.raises(KeyError, match="not in this tokenizer"):
        token_id(tok, "<nope>")


def test_qwen_tokenizer_real_vocabulary():
    tok = load_tokenizer(BackboneConfig(tokenizer="qwen"))
    # Qwen2.5: "Hello world" -> [9707, 1879]; specials from 151643 (tokenizer_config.json of
    # Qwen/Qwen2.5-VL-3B-Instruct); InternVL3 adds <img> 151665, </img> 151666, <IMG_CONTEXT> 151667
    # (added_tokens.json of OpenGVLab/InternVL3-1B-hf).
    assert tok("Hello world").input_ids == [9707, 1879]
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|vision_start|>": 151652,
                "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<|file_sep|>": 151664,
                "<img>": 151665, "</img>": 151666, "<IMG_CONTEXT>": 151667, "</box>": 151673}
    assert {t: token_id(tok, t) for t in expected} == expected
    assert len(tok) == 151674 and tok.pad_token_id == 151643 and tok.eos_token_id == 151645
    text = "<|im_start|>user\nA photo of <img></img> a café<|im_end|>"
    assert tok.decode(tok(text).input_ids) == text


# ---------------------------------------------------------------- real architectures (meta device)

GB = 1e9  # the hub's file listing uses decimal gigabytes, rounded to 0.01 GB


@pytest.mark.parametrize("family,hf_config,published_bytes,files", [
    # model.safetensors 1.88 GB (bf16), https://huggingface.co/OpenGVLab/InternVL3-1B-hf/tree/main
    ("internvl", INTERNVL3_1B, 1.88 * GB, 1),
    # model.safetensors 4.18 GB (bf16), https://huggingface.co/OpenGVLab/InternVL3-2B-hf/tree/refs%2Fpr%2F2
    ("internvl", INTERNVL3_2B, 4.18 * GB, 1),
    # model-00001-of-00002 3.98 GB + model-00002-of-00002 3.53 GB (bf16, embeddings tied: stored once),
    # https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/tree/main
    ("qwen2_5_vl", QWEN25VL_3B, (3.98 + 3.53) * GB, 2),
])
def test_real_vlm_totals_match_published_checkpoint_sizes(family, hf_config, published_bytes, files):
    counts = count_vlm_parameters(BackboneConfig(family=family, hf_config=hf_config))
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    # 2 bytes per bf16 parameter; each listed size is rounded to +-0.005 GB (headers are ~100 kB)
    assert abs(2 * counts["total"] - published_bytes) <= files * 0.005 * GB + 1e6


@pytest.mark.parametrize("hf_config,family,params_b,non_embedding_b", [
    # Qwen2.5-0.5B model card: "Number of Parameters: 0.49B, Number of Parameters (Non-Embedding): 0.36B"
    (INTERNVL3_1B, "internvl", 0.49, 0.36),
    # Qwen2.5-1.5B model card: 1.54B, non-embedding 1.31B
    (INTERNVL3_2B, "internvl", 1.54, 1.31),
    # Qwen2.5-3B model card: 3.09B, non-embedding 2.77B
    (QWEN25VL_3B, "qwen2_5_vl", 3.09, 2.77),
])
def test_real_llms_match_qwen25_model_cards(hf_config, family, params_b, non_embedding_b):
    counts = count_vlm_parameters(BackboneConfig(family=family, hf_config=hf_config))
    text = hf_config["text_config"]
    embedding = text["vocab_size"] * text["hidden_size"]
    assert abs(counts["llm"] / 1e9 - params_b) <= 0.005
    assert abs((counts["llm"] - embedding) / 1e9 - non_embedding_b) <= 0.005
    # InternVL3 keeps a separate lm_head; Qwen2.5-VL-3B ties it to the embeddings
    assert counts["lm_head"] == (0 if text["tie_word_embeddings"] else embedding)


def test_dc_ae_sana_matches_published_weight_file():
    from diffusers import AutoencoderDC

    with torch.device("meta"):
        dc = AutoencoderDC(**DC_AE_F32C32_SANA)
    # diffusion_pytorch_model.safetensors 1.25 GB (fp32),
    # https://huggingface.co/mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers/tree/main
    assert abs(4 * sum(p.numel() for p in dc.parameters()) - 1.25 * GB) <= 0.005 * GB + 1e6
    assert dc.spatial_compression_ratio == 32
