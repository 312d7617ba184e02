"""Tiny random VLM configs (a few hundred K parameters, CPU milliseconds) for tests and `tiny` presets.

Same classes and structure as the real models, only narrow: 112 px images, patch 14, so one image
gives an 8x8 patch grid and a 4x4 grid of latent tokens (stride 28). Token ids follow the
"tiny-bpe" tokenizer (its specials take ids 0..9 in `TINY_SPECIALS` order).
"""
from vgt.backbones.real_configs import dc_ae_config
from vgt.backbones.tokenizer import TINY_SPECIALS, TINY_VOCAB_SIZE

_IDS = {tok: i for i, tok in enumerate(TINY_SPECIALS)}

# Shared narrow Qwen2 LLM: hidden 64, 4 heads of 16, 2 KV heads, 2 layers.
_TINY_TEXT = dict(vocab_size=TINY_VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  bos_token_id=None, eos_token_id=_IDS["<|im_end|>"], pad_token_id=_IDS["<|endoftext|>"],
                  tie_word_embeddings=False)

TINY_INTERNVL = dict(
    vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=[112, 112], patch_size=[14, 14]),
    text_config=dict(model_type="qwen2", **_TINY_TEXT),
    image_token_id=_IDS["<IMG_CONTEXT>"], image_seq_length=16, downsample_ratio=0.5,
    vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)

TINY_QWEN = dict(
    # window_size 56 px = 2x2 merged tokens per window at 112 px, so window attention really partitions
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                       fullatt_block_indexes=[1]),
    # mrope_section sums to head_dim / 2 = 8
    text_config=dict(**_TINY_TEXT, rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                                    "mrope_section": [2, 3, 3]}),
    image_token_id=_IDS["<|image_pad|>"], video_token_id=_IDS["<|video_pad|>"],
    vision_start_token_id=_IDS["<|vision_start|>"], vision_end_token_id=_IDS["<|vision_end|>"],
    tie_word_embeddings=False)

# The DC-AE f32 layout at widths 8..32: a 4x4 latent decodes to 128 px (spatial factor 32) in ~30 ms
# on one CPU core; ~89 K decoder parameters. The last width must be a multiple of latent_channels
# (the decoder's input shortcut repeats channels).
TINY_DC_AE = dc_ae_config([8, 8, 16, 16, 32, 32], encoder_layers=[1] * 6, decoder_layers=[1] * 6, attention_head_dim=8)
