"""Architecture numbers of the real VLMs the presets load (transformers config kwargs).

Every architecture number is written out rather than left to transformers' defaults, so the
configs stay offline and version-proof. Sources:

* InternVL3-1B: the original `OpenGVLab/InternVL3-1B` config and module tree as printed by
  the original remote-code model class (github shivangjhalani/multicoco,
  InternVL3-1B_data.md): InternViT-300M (24 layers, width 1024, 16 heads, MLP 4096, qkv bias, no
  qk-norm, LayerNorm eps 1e-6, 448 px, patch 14), mlp1 = LN(4096, eps 1e-5) -> 4096->896 -> GELU ->
  896->896, Qwen2 LLM (896 wide, 24 layers, 14 heads, 2 KV heads, MLP 4864, vocab 151674, rope theta
  1e6 with dynamic scaling factor 2, RMSNorm eps 1e-6, max positions 32768) and an untied lm_head.
  The transformers-native copy `OpenGVLab/InternVL3-1B-hf` holds the same numbers (its
  config.json is mirrored in hf-internal-testing/tiny-processor-internvl: text_config hidden 896,
  intermediate 4864, 24 layers, 14/2 heads, vocab 151674, rope dynamic x2, image_token_id 151667,
  image_seq_length 256, downsample_ratio 0.5, projector_hidden_act gelu).
* InternVL3-2B: same InternViT-300M-448px-V2.5 and projector recipe; LLM = Qwen2.5-1.5B
  (1536 wide, 28 layers, 12 heads, 2 KV heads, MLP 8960), InternVL vocabulary 151674, untied head
  (InternVL3 model card table "InternVL3-2B: InternViT-300M-448px-V2_5 + Qwen2.5-1.5B").
* Qwen2.5-VL-3B-Instruct: `Qwen/Qwen2.5-VL-3B-Instruct` config.json (copies e.g.
  dahwinsingularity/vllm2, geshang/Seg-R1-3B): LLM 2048 wide, 36 layers, 16 heads, 2 KV heads,
  MLP 11008, vocab 151936, rope theta 1e6, mrope_section [16, 24, 24], tied embeddings,
  max positions 128000; vision hidden 1280, out_hidden_size 2048, patch 14, tokens_per_second 2, the
  rest at the Qwen2.5-VL vision defaults: depth 32, MLP 3420, 16 heads, window 112,
  full-attention blocks 7/15/23/31, spatial merge 2, temporal patch 2.
"""
from __future__ import annotations

# InternViT-300M-448px-V2.5 (InternVL3-1B and -2B share it)
_INTERNVIT_300M = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, hidden_act="gelu",
    attention_bias=True, use_qk_norm=False, norm_type="layer_norm", layer_norm_eps=1e-6,
    image_size=[448, 448], patch_size=[14, 14], num_channels=3, use_mask_token=False,
    use_absolute_position_embeddings=True, layer_scale_init_value=0.1, use_mean_pooling=True,
    hidden_dropout_prob=0.0, attention_dropout=0.0, projection_dropout=0.0)

# InternVL's added image tokens (ids of the InternVL3 tokenizer: <img> 151665, </img> 151666, <IMG_CONTEXT> 151667)
_INTERNVL_TOP = dict(image_token_id=151667, image_seq_length=256, downsample_ratio=0.5, projector_hidden_act="gelu",
                     vision_feature_layer=-1, vision_feature_select_strategy="default", tie_word_embeddings=False)


def _qwen2_llm(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    """A Qwen2.5 LLM as InternVL3 ships it (vocab with InternVL's 9 extra tokens, rope dynamic x2)."""
    return dict(model_type="qwen2", vocab_size=151674, hidden_size=hidden, intermediate_size=intermediate,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=2, hidden_act="silu",
                max_position_embeddings=32768, rms_norm_eps=1e-6, attention_dropout=0.0,
                rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1_000_000.0},
                use_sliding_window=False, sliding_window=None, max_window_layers=70,
                bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=False)


INTERNVL3_1B = dict(vision_config=dict(_INTERNVIT_300M), text_config=_qwen2_llm(896, 24, 14, 4864), **_INTERNVL_TOP)
INTERNVL3_2B = dict(vision_config=dict(_INTERNVIT_300M), text_config=_qwen2_llm(1536, 28, 12, 8960), **_INTERNVL_TOP)

QWEN25VL_3B = dict(
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, hidden_act="silu",
                       in_channels=3, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                       tokens_per_second=2, window_size=112, out_hidden_size=2048,
                       fullatt_block_indexes=[7, 15, 23, 31]),
    text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, hidden_act="silu", max_position_embeddings=128000,
                     rms_norm_eps=1e-6, attention_dropout=0.0, use_sliding_window=False, sliding_window=32768,
                     max_window_layers=70, bos_token_id=151643, eos_token_id=151645, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0,
                                      "mrope_section": [16, 24, 24]}),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=True)


def dc_ae_config(widths: list[int], encoder_layers: list[int], decoder_layers: list[int],
                 attention_head_dim: int) -> dict:
    """AutoencoderDC kwargs of the DC-AE layout: len(widths) stages (spatial factor 2**(stages-1);
    6 stages = f32), ResBlocks then the last 3 EfficientViT with multi-scale 5 attention,
    interpolate upsampling, conv downsampling, RMS norm, SiLU."""
    if len(widths) < 3 or not len(widths) == len(encoder_layers) == len(decoder_layers):
        raise ValueError(f"need >= 3 stages and one layer count per stage: widths {widths}, "
                         f"encoder_layers {encoder_layers}, decoder_layers {decoder_layers}")
    types = ["ResBlock"] * (len(widths) - 3) + ["EfficientViTBlock"] * 3
    multiscales = [[]] * (len(widths) - 3) + [[5]] * 3
    return dict(
        in_channels=3, latent_channels=32, attention_head_dim=attention_head_dim,
        encoder_block_types=types, decoder_block_types=list(types),
        encoder_block_out_channels=list(widths), decoder_block_out_channels=list(widths),
        encoder_layers_per_block=list(encoder_layers), decoder_layers_per_block=list(decoder_layers),
        encoder_qkv_multiscales=[list(m) for m in multiscales], decoder_qkv_multiscales=[list(m) for m in multiscales],
        upsample_block_type="interpolate", downsample_block_type="Conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
        encoder_out_shortcut=True, decoder_in_shortcut=True, decoder_conv_act_fn="relu")


# DC-AE f32c32 (diffusers AutoencoderDC kwargs). Checked against public sources (numbers only):
# * SANA-1.0's release: the config.json of mit-han-lab/dc-ae-f32c32-sana-1.0-diffusers, mirrored in
#   https://huggingface.co/Efficient-Large-Model/Sana_600M_1024px_diffusers/blob/main/vae/config.json
#   (`_name_or_path` the 1.0 repo): every number below, scaling_factor 0.41407; the same numbers are
#   diffusers' own SANA-1.0 conversion recipe (huggingface/diffusers scripts/convert_dcae_to_diffusers.py
#   `get_ae_config`, commit 58eb52c0803ea9af3abec60841c2a093bdf1f951) and efficientvit's
#   (mit-han-lab/efficientvit efficientvit/models/efficientvit/dc_ae.py `dc_ae_f32c32`, "sana-1.0",
#   commit de7d7733cc0329f391b33f1f459271562ec27bd5).
# * SANA-1.1 (mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers, the preset's decoder.pretrained): per
#   efficientvit assets/docs/dc_ae_sana_1.1.md (same commit) it keeps SANA-1.0's encoder, retrains the
#   decoder, and serves models trained on 1.0's latents unchanged: the encoder_* kwargs, latent_channels
#   32 and the f32 layout (6 stages) hold for 1.1. NVlabs/Sana uses it with
#   scale_factor 0.41407, latent dim 32, downsample rate 32 (diffusion/utils/config.py `AEConfig`,
#   commit c28b9bf5798cd6e177efa450f17bc2f453282f85); hustvl/VGT loads it with
#   AutoencoderDC.from_pretrained and keeps `.decoder` (tokenizer/modeling/vlvae_intervl.py:211-212,
#   commit 56bd80e2a1ceef490627e0c1df5805aa5bb13ddf). The three kwargs after scaling_factor were added to
#   AutoencoderDC in diffusers 85cbe589a7c9c9b687b9d8790b84b0119eab9514 with the behaviour of the code
#   before them as defaults (the decoder's ReLU was hard-coded), which is what a released config that
#   predates them (1.0's says `_diffusers_version` 0.32.0.dev0 and omits them) loads with.
# NOT verified: the decoder_* numbers of 1.1 itself (block widths, layers per block, block types,
# multiscales, norm, activation, upsampling, attention_head_dim). Its config.json was not readable
# here; the model page lists it at 1.21 kB and the weights at 1.25 GB, the sizes of 1.0's, which
# suggests but does not prove the same decoder layout. Only the offline builds read these numbers
# (`vgt convert`, `vgt info`): with decoder.pretrained set, the released config.json is loaded and
# recorded in every folder written (docs/artifacts.md §2.1), and a converted reference checkpoint
# whose decoder tensors had other shapes would be refused by name.
DC_AE_F32C32_SANA = dc_ae_config([128, 256, 512, 512, 1024, 1024], encoder_layers=[2, 2, 2, 3, 3, 3],
                                 decoder_layers=[3] * 6, attention_head_dim=32)
